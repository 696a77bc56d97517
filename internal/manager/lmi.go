package manager

import "math"

// Metrics are normalised across a port's servers so that 1 means "as
// loaded as its peers", whatever the metric's unit, and heterogeneous
// servers and metrics compare and combine.
//
// Active flows are read per unit of weight: a server with twice the weight
// rightly holds twice the flows, but a server that holds its flows longer
// than its peers (Little's law: active = arrival rate x response time) is
// slower, and that is the signal. Its load is its active flows divided by
// the part of the port's total its weight entitles it to.
//
// New flows are read per unit of weight too: under the Maglev scheduler
// they read 1 (the weights decide them) unless something else (affinity)
// sends a server more than its weight.
//
// Under the p2c scheduler the data plane itself evens out active flows per
// unit of weight, so that reading says little, and new flows per unit of
// weight are the data plane's own choice, not the server's load: read as
// load they would raise the weight of the very server p2c steers away
// from. What still tells servers apart is how long each holds a flow:
// active over new flows, its response time by Little's law. Under p2c the
// manager reads that, for the proportions of both input metrics
// (responseLoads).
//
// Every other metric (advisor latency, CPU, load average, an operator's
// command) is read against the mean of the port's servers.

// extensiveLoads normalises an extensive metric: m[i] against the share of
// the total that weight w[i] entitles server i to. Servers with no reading
// (ok false) or weight 0 read 1. When the port carried nothing, every
// server reads 1: no traffic is no evidence.
func extensiveLoads(m []float64, ok []bool, w []float64) []float64 {
	out := ones(len(m))
	var sum, wsum float64
	for i := range m {
		if ok[i] && w[i] > 0 {
			sum += m[i]
			wsum += w[i]
		}
	}
	if sum <= 0 || wsum <= 0 {
		return out
	}
	for i := range m {
		if ok[i] && w[i] > 0 {
			fair := sum * w[i] / wsum
			out[i] = m[i] / fair
		}
	}
	return out
}

// minResponseFlows is how many new flows a port's servers must have taken
// in an interval, on average, for their response times to be told apart:
// with fewer (long-lived flows, an idle port) active over new is noise.
const minResponseFlows = 10

// responseLoads normalises active flows by the new flows each server took
// over the interval, active[i] / newFlows[i] (its response time, Little's
// law), against the mean of the servers with a reading. It returns false
// when the port took too few new flows to tell; a server that took none
// while holding flows reads as if it had taken one: it keeps its flows and
// takes no more, the slowest of all.
func responseLoads(active, newFlows []float64, ok []bool) ([]float64, bool) {
	rt := make([]float64, len(active))
	var total float64
	n := 0
	for i := range active {
		if ok[i] {
			total += newFlows[i]
			n++
		}
	}
	if n == 0 || total < minResponseFlows*float64(n) {
		return nil, false
	}
	for i := range active {
		if ok[i] {
			rt[i] = active[i] / math.Max(newFlows[i], 1)
		}
	}
	return intensiveLoads(rt, ok), true
}

// intensiveLoads normalises an intensive metric against the mean of the
// servers that have a reading. Negative readings count as 0.
func intensiveLoads(m []float64, ok []bool) []float64 {
	out := ones(len(m))
	var sum float64
	n := 0
	for i := range m {
		if ok[i] {
			sum += math.Max(m[i], 0)
			n++
		}
	}
	if n == 0 || sum <= 0 {
		return out
	}
	mean := sum / float64(n)
	for i := range m {
		if ok[i] {
			out[i] = math.Max(m[i], 0) / mean
		}
	}
	return out
}

func ones(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = 1
	}
	return out
}

// combine is the Load Metric Index: sum of R(i) * l(i), with the
// proportions in percent. Proportions that sum to 0 leave every server at 1.
func combine(props []uint32, loads [][]float64, n int) []float64 {
	out := make([]float64, n)
	var total uint32
	for _, p := range props {
		total += p
	}
	if total == 0 {
		return ones(n)
	}
	for k, p := range props {
		if p == 0 {
			continue
		}
		for i := 0; i < n; i++ {
			out[i] += float64(p) / float64(total) * loads[k][i]
		}
	}
	return out
}
