//go:build race

package tunnel

// raceEnabled reports whether the race detector is on: it disables some
// compiler optimisations, so allocation tests of code that relies on them
// skip.
const raceEnabled = true
