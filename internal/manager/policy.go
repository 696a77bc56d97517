package manager

import (
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Input is what a weight computation function sees of one port: the servers
// that may take new flows (healthy, not quiesced, not cooling down, not
// fixed), each with its weight in the data plane and its Load Metric Index.
type Input struct {
	Port      nd.ServiceKey
	Bound     uint32  // weights run from 0 to Bound
	Smoothing float64 // 1 follows the metrics at once; larger is slower
	// DeadBand is the ratio within which a target counts as the weight it
	// is compared with (see Proportional); 0 means the default, 1.25.
	DeadBand float64
	// Confirm asks for two intervals in a row to agree before a weight
	// moves away (Proportional), from LMI and PrevLMI.
	Confirm bool
	Servers []ServerInput
}

// ServerInput is one server in Input.
type ServerInput struct {
	Addr netip.Addr
	// Weight is the server's weight in the data plane now; Configured the
	// operator's.
	Weight, Configured uint32
	// LMI is the server's load relative to its peers: 1 is as loaded as
	// they are for its weight, 2 twice as loaded.
	LMI float64
	// PrevLMI is the server's LMI the interval before (0: none).
	PrevLMI float64
	// Returning marks a server coming back from weight 0 (down, disabled,
	// cooled down): it must be brought back gently, not flooded.
	Returning bool
	// MaxStep is the largest ratio the weight may move by this interval
	// (up or down); 0 means no bound beyond the function's own. The
	// manager narrows it each time a server's weight turns back, so that
	// a weight circling its balance point closes in on it.
	MaxStep float64
}

// WeightFunc is the paper's replaceable Weight Computation Function: it
// returns the new weight of each server of in.Servers, in order, each from
// 0 to in.Bound.
type WeightFunc interface {
	Name() string
	Weights(in Input) []uint32
	// Absolute reports whether the function compares servers' raw loads
	// rather than loads per unit of weight: a function that starves most
	// servers (best server) cannot judge them by what their weight brought.
	Absolute() bool
}

// Policy names.
const (
	PolicyDefault = "default"
	PolicyBest    = "best"
	PolicyStatic  = "static"
)

// NewWeightFunc returns the weight function of a policy name.
func NewWeightFunc(policy string) (WeightFunc, error) {
	switch policy {
	case PolicyDefault, "":
		return Proportional{}, nil
	case PolicyBest:
		return BestServer{Margin: 0.2}, nil
	case PolicyStatic:
		return Static{}, nil
	}
	return nil, fmt.Errorf("manager: unknown policy %q (want default, best or static)", policy)
}

// Proportional is the default policy: each server's target weight is its
// configured weight times the typical server's LMI (the lower median) over
// its own: a server as loaded as the typical one is aimed at its
// configured weight, one twice as loaded at half of it. The configured
// weights are the operator's statement of capacity; the LMI corrects them
// by what the servers show. Aiming at a target, rather than multiplying
// the current weight by 1/LMI every interval, gives the loop a fixed point
// to settle on, and the total cannot drift. A target within 25% of the
// configured weight is the configured weight: weights at rest sit on it,
// and one that was lowered goes back to it when its load does. A target
// within 25% of the current weight leaves it as it is: the metrics' own
// noise is of that order, and chasing it would make weights wander.
//
// Weights move toward the targets geometrically, by 1/Smoothing of the way
// in log terms each interval (1 jumps at once), and at most double or
// halve in an interval (less once a weight has turned back: MaxStep), so
// that a burst in one interval's metrics cannot swing a weight far, and a
// server whose metrics look idle (it just came back) is not flooded
// before they catch up.
type Proportional struct{}

func (Proportional) Name() string   { return PolicyDefault }
func (Proportional) Absolute() bool { return false }

// minLMI bounds how idle a server may look: a server whose metrics read
// near 0 would otherwise be given an unbounded weight.
const minLMI = 0.1

// maxStep bounds how far a weight moves in one interval, as a ratio.
const maxStep = 2.0

// deadBand is the ratio of target to weight within which a weight stays.
const deadBand = 1.25

// DeadBandP2C is the dead band the manager gives the weight function for a
// port under the p2c scheduler. There the data plane evens out what the
// weights get wrong within a flow's time (by itself it gives a server four
// times slower about its capacity share at equal weights), so the weights
// need only follow differences it cannot absorb; and the response times
// the manager reads there swing by 30% and more between intervals at a few
// hundred flows a server, and with the weights themselves (a server cut
// back makes its peers queue more, and so look relatively faster).
const DeadBandP2C = 2.0

func (Proportional) Weights(in Input) []uint32 {
	n := len(in.Servers)
	out := make([]uint32, n)
	if n == 0 {
		return out
	}
	band := deadBand
	if in.DeadBand > 1 {
		band = in.DeadBand
	}
	inBand := func(a, b float64) bool { return within(a, b, band) }
	now := anchoredTargets(in.Servers, func(s ServerInput) float64 { return math.Max(s.LMI, minLMI) })
	var prev []float64
	if in.Confirm {
		prev = anchoredTargets(in.Servers, func(s ServerInput) float64 { return s.PrevLMI })
	}
	smoothing := math.Max(in.Smoothing, 1)
	if in.Confirm {
		// Under p2c a server's reading moves against its own weight (p2c
		// holds its active flows in proportion to it): a target read at
		// weight w comes out near A/w, and moving half the way in log
		// terms lands on the balance point where smoothing 1.5 would
		// overshoot it.
		smoothing = math.Max(smoothing, 2)
	}
	for i, s := range in.Servers {
		cur := float64(max(s.Weight, 1))
		c := float64(max(s.Configured, 1))
		t := now[i]
		if prev != nil {
			// Confirmed: a move needs this interval's target and the
			// last one's out of the dead band on the same side, and
			// goes to the nearer of the two; one interval's swing moves
			// nothing.
			p := prev[i]
			switch {
			case p == 0:
				// No reading at this weight yet.
				t = cur
			case t == c && p == c:
			case !inBand(t, cur) && !inBand(p, cur) && (t > cur) == (p > cur):
				if math.Abs(math.Log(p/cur)) < math.Abs(math.Log(t/cur)) {
					t = p
				}
			default:
				t = cur
			}
		}
		// Close to its configured weight (a target there, see
		// anchoredTargets) a weight goes straight there: a fixed point
		// cannot make a weight wander.
		if t == c && inBand(c, cur) {
			out[i] = clampWeight(c, in.Bound)
			continue
		}
		// Within the dead band the weight stays: moves smaller than the
		// metrics' own noise would only make weights wander.
		if inBand(t, cur) {
			out[i] = clampWeight(cur, in.Bound)
			continue
		}
		ratio := t / cur
		if t != c {
			// Smoothing is for targets read from load, which are noisy;
			// the configured weight is a fixed point, approached within
			// the step bounds only (smoothed, the last moves toward it
			// could fall below the sensitivity threshold for good).
			ratio = math.Pow(ratio, 1/smoothing)
		}
		limit := maxStep
		if s.MaxStep >= 1 {
			limit = math.Min(limit, s.MaxStep)
		}
		up := limit
		if s.Returning {
			up = math.Min(up, 1.5)
		}
		ratio = math.Min(math.Max(ratio, 1/limit), up)
		out[i] = clampWeight(cur*ratio, in.Bound)
	}
	return out
}

// anchoredTargets is each server's target weight from the LMI that lmi
// reads (0 where a server has none): its configured weight times the
// typical LMI over its own. The typical server is aimed at its configured
// weight and the others by their load relative to it, so that an outlier
// moves alone, and the servers around the median stay on their configured
// weights instead of taking up what the outlier gave away (the shares are
// the same either way). The typical LMI is the mean of those within the
// dead band of the lower median: one server's reading alone is as noisy as
// each of the others'. A target within the dead band of the configured
// weight is the configured weight: weights at rest sit on the operator's
// statement of capacity, and one that was lowered returns there when its
// load does, not wherever its last excursion left it.
func anchoredTargets(servers []ServerInput, lmi func(ServerInput) float64) []float64 {
	inBand := func(a, b float64) bool { return within(a, b, deadBand) }
	out := make([]float64, len(servers))
	var have []float64
	for _, s := range servers {
		if l := lmi(s); l > 0 {
			have = append(have, math.Max(l, minLMI))
		}
	}
	if len(have) == 0 {
		return out
	}
	sorted := slices.Clone(have)
	slices.Sort(sorted)
	median := sorted[(len(sorted)-1)/2]
	var sum float64
	k := 0
	for _, l := range have {
		if inBand(l, median) {
			sum += l
			k++
		}
	}
	typical := sum / float64(k)
	for i, s := range servers {
		l := lmi(s)
		if l <= 0 {
			continue
		}
		c := float64(max(s.Configured, 1))
		cur := float64(max(s.Weight, 1))
		t := c * typical / math.Max(l, minLMI)
		// Near the configured weight, or past it seen from the current
		// weight (a server cut back that now reads lighter than its
		// peers), the target is the configured weight.
		if inBand(t, c) || (cur < c && t > c) || (cur > c && t < c) {
			t = c
		}
		out[i] = t
	}
	return out
}

// within reports whether a is within a factor band of b.
func within(a, b, band float64) bool {
	r := a / b
	return r < band && r > 1/band
}

// clampWeight rounds w into 1..bound: a server the manager keeps in the
// working set always gets some flows, so that its metrics keep speaking
// for it; weight 0 is for servers taken out (down, disabled, cooling down).
func clampWeight(w float64, bound uint32) uint32 {
	r := math.Round(w)
	if r < 1 || math.IsNaN(r) {
		return 1
	}
	if r > float64(bound) {
		return bound
	}
	return uint32(r)
}

// BestServer sends every new flow to the least-loaded server (the paper's
// "best server" allocation): weight Bound to it, 0 to the others, whose
// established flows carry on. The current best keeps its place unless
// another is lighter by more than Margin (0.2: 20%), so that two servers
// of equal load do not swap every interval.
type BestServer struct {
	Margin float64
}

func (BestServer) Name() string   { return PolicyBest }
func (BestServer) Absolute() bool { return true }

func (b BestServer) Weights(in Input) []uint32 {
	out := make([]uint32, len(in.Servers))
	if len(in.Servers) == 0 {
		return out
	}
	best, cur := 0, -1
	for i, s := range in.Servers {
		if s.LMI < in.Servers[best].LMI {
			best = i
		}
		if s.Weight > 0 && (cur < 0 || s.Weight > in.Servers[cur].Weight) {
			cur = i
		}
	}
	if cur >= 0 && in.Servers[cur].LMI <= in.Servers[best].LMI*(1+b.Margin) {
		best = cur
	}
	out[best] = in.Bound
	return out
}

// Static keeps the configured weights: the manager still takes servers
// that are down or disabled out, and reports, but does not follow load
// (no cool-down either).
type Static struct{}

func (Static) Name() string   { return PolicyStatic }
func (Static) Absolute() bool { return false }

func (Static) Weights(in Input) []uint32 {
	out := make([]uint32, len(in.Servers))
	for i, s := range in.Servers {
		out[i] = min(s.Configured, in.Bound)
	}
	return out
}
