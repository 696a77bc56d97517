package lab

import "github.com/nd-dispatcher/nd/internal/netns"

// sweepPrefix starts default lab names: ndlab<pid>-<random>-<host>.
const sweepPrefix = "ndlab"

// SweepStale deletes the namespaces of labs with default names whose
// process is gone, such as those of a test binary that was killed, and
// returns their names. Labs of live processes, and labs with a custom
// Options.Prefix, are left alone. logf may be nil.
func SweepStale(logf func(string, ...any)) ([]string, error) {
	return netns.SweepStale(sweepPrefix, logf)
}
