package main

import "github.com/masque-vpn/masque/cmd/internal/cli"

// logFormat is --log-format (package cli).
type logFormat = cli.LogFormat

const (
	logText = cli.LogText
	logJSON = cli.LogJSON
)

var (
	addLogFormatFlag = cli.AddLogFormatFlag
	newLogger        = cli.NewLogger
)
