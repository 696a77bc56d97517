package maglev

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// testBackends returns n backends keyed like real server addresses, with IDs from 1.
func testBackends(n int, weight func(i int) uint32) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{
			Key:    fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff),
			ID:     uint32(i + 1),
			Weight: weight(i),
		}
	}
	return bs
}

func equalWeights(int) uint32 { return 10 }

// randomWeights draws weights in [1, 100] from a fixed seed, so failures reproduce.
func randomWeights(seed uint64) func(int) uint32 {
	r := rand.New(rand.NewPCG(seed, 0x6d61676c6576))
	return func(int) uint32 { return uint32(r.IntN(100) + 1) }
}

func listWeights(ws ...uint32) func(int) uint32 {
	return func(i int) uint32 { return ws[i] }
}

func mustBuild(t testing.TB, size uint32, bs []Backend) []uint32 {
	t.Helper()
	table, err := Build(size, bs)
	if err != nil {
		t.Fatalf("Build(%d, %d backends): %v", size, len(bs), err)
	}
	if len(table) != int(size) {
		t.Fatalf("Build returned %d slots, want %d", len(table), size)
	}
	return table
}

func slotCounts(table []uint32) map[uint32]int {
	counts := make(map[uint32]int)
	for _, id := range table {
		counts[id]++
	}
	return counts
}

// checkProportional asserts the acceptance bound: each backend's slots are within 1%
// (relative) of its exact share, or within one slot where one slot is more than 1% of
// the share. Largest-remainder apportionment promises more, under one slot for every
// backend, so that is asserted too: a table that meets only the looser bound has lost
// the exactness the design is built on.
func checkProportional(t *testing.T, size uint32, bs []Backend, table []uint32) {
	t.Helper()
	var total float64
	weights := make(map[uint32]uint32, len(bs))
	for _, b := range bs {
		total += float64(b.Weight)
		weights[b.ID] = b.Weight
	}
	counts := slotCounts(table)
	for id := range counts {
		if weights[id] == 0 {
			t.Errorf("ID %d holds %d slots but has weight 0 or is unknown", id, counts[id])
		}
	}
	for _, b := range bs {
		want := float64(size) * float64(b.Weight) / total
		got := float64(counts[b.ID])
		dev := math.Abs(got - want)
		if allowed := max(0.01*want, 1); dev > allowed {
			t.Errorf("%s (weight %d): %v slots, want %.3f±%.3f", b.Key, b.Weight, got, want, allowed)
		}
		if dev >= 1 {
			t.Errorf("%s (weight %d): %v slots, %.3f from its exact share %.3f; apportionment allows under 1",
				b.Key, b.Weight, got, dev, want)
		}
	}
}

func TestBuildProportional(t *testing.T) {
	tests := []struct {
		name string
		size uint32
		bs   []Backend
	}{
		{"1000 equal", DefaultSize, testBackends(1000, equalWeights)},
		{"1000 random 1..100", DefaultSize, testBackends(1000, randomWeights(1))},
		{"1000 random 1..100 other seed", DefaultSize, testBackends(1000, randomWeights(2))},
		{"100 random 1..100", DefaultSize, testBackends(100, randomWeights(3))},
		{"1:2:3:4", DefaultSize, testBackends(4, listWeights(1, 2, 3, 4))},
		{"single", DefaultSize, testBackends(1, equalWeights)},
		{"tiny share", DefaultSize, testBackends(3, listWeights(1, 1_000_000, 3_000_000))},
		{"max weights", DefaultSize, testBackends(3, listWeights(math.MaxUint32, math.MaxUint32, 1))},
		{"zero weights mixed in", DefaultSize, testBackends(6, listWeights(0, 5, 0, 7, 1, 0))},
		{"small table", 7, testBackends(3, listWeights(1, 2, 3))},
		{"as many backends as slots", 11, testBackends(11, equalWeights)},
		{"large table", 655373, testBackends(1000, randomWeights(4))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if testing.Short() && tt.size > DefaultSize {
				t.Skip("large table in -short mode")
			}
			checkProportional(t, tt.size, tt.bs, mustBuild(t, tt.size, tt.bs))
		})
	}
}

func TestBuildErrors(t *testing.T) {
	ok := testBackends(3, equalWeights)
	tests := []struct {
		name string
		size uint32
		bs   []Backend
		want error
	}{
		{"size 0", 0, ok, ErrInvalidSize},
		{"size 2 below minimum", 2, ok, ErrInvalidSize},
		{"size not prime", 65536, ok, ErrInvalidSize},
		{"size odd composite", 65535, ok, ErrInvalidSize},
		{"size prime above maximum", 16777259, ok, ErrInvalidSize},
		{"no backends", DefaultSize, nil, ErrNoBackends},
		{"all weights zero", DefaultSize, testBackends(3, func(int) uint32 { return 0 }), ErrNoBackends},
		{"duplicate key", DefaultSize, []Backend{{"a", 1, 1}, {"b", 2, 1}, {"a", 3, 1}}, ErrInvalidBackend},
		{"duplicate key at weight 0", DefaultSize, []Backend{{"a", 1, 1}, {"a", 2, 0}}, ErrInvalidBackend},
		{"duplicate ID", DefaultSize, []Backend{{"a", 1, 1}, {"b", 2, 1}, {"c", 1, 1}}, ErrInvalidBackend},
		{"duplicate ID at weight 0", DefaultSize, []Backend{{"a", 7, 1}, {"b", 7, 0}}, ErrInvalidBackend},
		{"empty key", DefaultSize, []Backend{{"", 1, 1}}, ErrInvalidBackend},
		{"more backends than slots", 3, testBackends(4, equalWeights), ErrInvalidBackend},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := Build(tt.size, tt.bs)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Build: err = %v, want %v", err, tt.want)
			}
			if table != nil {
				t.Errorf("Build returned a table alongside error %v", err)
			}
		})
	}
}

func TestSizeBounds(t *testing.T) {
	for _, size := range []uint32{MinSize, 16777213} { // 16777213 is the largest prime ≤ MaxSize
		if err := checkSize(size); err != nil {
			t.Errorf("checkSize(%d) = %v, want nil", size, err)
		}
	}
}

func TestIsPrime(t *testing.T) {
	const limit = 100_000
	composite := make([]bool, limit)
	for i := 2; i*i < limit; i++ {
		for j := i * i; j < limit; j += i {
			composite[j] = true
		}
	}
	for n := range uint32(limit) {
		if want := n >= 2 && !composite[n]; IsPrime(n) != want {
			t.Errorf("IsPrime(%d) = %v, want %v", n, !want, want)
		}
	}
	for n, want := range map[uint32]bool{
		65537:      true,
		655373:     true,
		16777213:   true,
		16777216:   false,
		4294967291: true,  // largest prime below 2^32
		4294967295: false, // 3·5·17·257·65537
		4294836225: false, // 65535², a square of a composite near the top
		4294705156: false, // 65534², even
		4293001441: false, // 65521², square of a prime: only its root divides it
	} {
		if got := IsPrime(n); got != want {
			t.Errorf("IsPrime(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestBuildDeterministic(t *testing.T) {
	bs := testBackends(300, randomWeights(5))
	bs[17].Weight = 0
	want := mustBuild(t, DefaultSize, bs)

	r := rand.New(rand.NewPCG(6, 7))
	for i := range 10 {
		shuffled := slices.Clone(bs)
		r.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		before := slices.Clone(shuffled)
		got := mustBuild(t, DefaultSize, shuffled)
		if !slices.Equal(got, want) {
			t.Fatalf("shuffle %d: table differs from the unshuffled build", i)
		}
		if !slices.Equal(shuffled, before) {
			t.Fatalf("shuffle %d: Build reordered its input", i)
		}
	}
}

// TestGoldenTable pins Build's output. An active and a standby dispatcher may run
// different nd versions during an upgrade, and they must still agree on every slot, so
// any change to the hash, the seeds, the apportionment or the turn order is an
// incompatible change. If this test fails, that is what happened: make it deliberately.
func TestGoldenTable(t *testing.T) {
	hashes := []struct {
		key          string
		offset, skip uint64
	}{
		{"198.51.100.11", 0x375bbb81e0746da1, 0x3d5b72338986e366},
		{"2001:db8::1", 0x715192b2a1ad846b, 0xf582445708770464},
		{"a", 0xc1b2e8943f13ee13, 0xd8c0d81bb301d947},
	}
	for _, h := range hashes {
		if got := hashKey(h.key, offsetSeed); got != h.offset {
			t.Errorf("hashKey(%q, offsetSeed) = %#x, want %#x", h.key, got, h.offset)
		}
		if got := hashKey(h.key, skipSeed); got != h.skip {
			t.Errorf("hashKey(%q, skipSeed) = %#x, want %#x", h.key, got, h.skip)
		}
	}

	bs := testBackends(50, randomWeights(8))
	bs = append(bs, Backend{Key: "198.51.100.11", ID: 1000, Weight: 0})
	table := mustBuild(t, DefaultSize, bs)
	sum := sha256.New()
	for _, id := range table {
		sum.Write(binary.LittleEndian.AppendUint32(nil, id))
	}
	// Cross-checked when pinned against an independent, deliberately naive
	// implementation (exact fractions, a priority queue, no shared code).
	const want = "5a51eee12e9a81b7fa38b87ca48cfbce0c308127c6593ccd7df08b27120c7695"
	if got := hex.EncodeToString(sum.Sum(nil)); got != want {
		t.Errorf("table digest = %s, want %s", got, want)
	}
}

// disruption returns how many slots changed owner between two tables, and the fewest
// that any table with the new slot counts would have had to change: every slot a backend
// gains must be taken from someone, so need = Σ max(0, new_i − old_i).
func disruption(before, after []uint32) (moved, need int) {
	for i := range before {
		if before[i] != after[i] {
			moved++
		}
	}
	was := slotCounts(before)
	for id, n := range slotCounts(after) {
		need += max(0, n-was[id])
	}
	return moved, need
}

// TestDisruption checks that changing one backend moves about as many slots as its share
// changed. Slots beyond that minimum are Maglev's cascade: a backend that gains or loses
// a turn early in the fill makes others claim different slots later. With equal weights
// Build is exactly classic Maglev, so the cascade is Maglev's own. It is a share of the
// table rather than of the change: it saturates once a change is more than a few dozen
// slots, whether there are 100 or 1,000 backends, which is why it dominates at 1,000
// backends, where one backend holds only 65 slots. Measured at 65537 slots over 200
// changes per scenario (100 and 1,000 backends, equal and random weights, doubling,
// halving, removing, adding) it averaged 0.32–0.59% of the table and was at most 1.02%
// for one change. Hence the bounds, with headroom over those figures:
//
//   - each change: moved ≤ 1.5·need + size/64 (1.56% of the table);
//   - the mean excess, moved − need, over a scenario: ≤ size/100.
//
// A table that is not consistent at all would move about (1−1/n) of all slots, far
// outside both.
func TestDisruption(t *testing.T) {
	const size = DefaultSize
	trials := 10
	if testing.Short() {
		trials = 3
	}
	ops := []struct {
		name  string
		apply func(bs []Backend, s int) []Backend
	}{
		{"double", func(bs []Backend, s int) []Backend { bs[s].Weight *= 2; return bs }},
		{"halve", func(bs []Backend, s int) []Backend { bs[s].Weight = max(1, bs[s].Weight/2); return bs }},
		{"remove", func(bs []Backend, s int) []Backend { return slices.Delete(bs, s, s+1) }},
		{"add", func(bs []Backend, s int) []Backend {
			return append(bs, Backend{Key: fmt.Sprintf("203.0.113.%d", s), ID: 1_000_000, Weight: bs[s].Weight})
		}},
	}
	for _, n := range []int{100, 1000} {
		for _, weighting := range []string{"equal", "random"} {
			weight := equalWeights
			if weighting == "random" {
				weight = randomWeights(9)
			}
			base := testBackends(n, weight)
			before := mustBuild(t, size, base)
			for _, op := range ops {
				t.Run(fmt.Sprintf("%d %s %s", n, weighting, op.name), func(t *testing.T) {
					excess := 0
					for j := range trials {
						s := j*n/trials + j // spread over the Key order and, for random weights, over weights
						after := mustBuild(t, size, op.apply(slices.Clone(base), s))
						moved, need := disruption(before, after)
						if limit := need + need/2 + size/64; moved > limit {
							t.Errorf("%s %s: moved %d slots, need %d, limit %d", op.name, base[s].Key, moved, need, limit)
						}
						// A removed backend's slots must all move. need can exceed them by a
						// few: the survivors' shares all grow, which can change which of
						// them win the rounding for an odd slot.
						if own := slotCounts(before)[base[s].ID]; op.name == "remove" && need < own {
							t.Errorf("remove %s: need %d, below its own %d slots", base[s].Key, need, own)
						}
						t.Logf("%s %s (weight %d): moved %d, need %d, excess %d (%.2f%% of table)",
							op.name, base[s].Key, base[s].Weight, moved, need, moved-need, 100*float64(moved-need)/size)
						excess += moved - need
					}
					if mean := excess / trials; mean > size/100 {
						t.Errorf("mean excess %d slots over %d changes, limit %d", mean, trials, size/100)
					}
				})
			}
		}
	}
}

func TestBuildFast(t *testing.T) {
	if testing.Short() {
		t.Skip("timing test skipped in -short mode")
	}
	if raceEnabled {
		t.Skip("timing test skipped under the race detector, which slows Build several times over")
	}
	bs := testBackends(1000, randomWeights(10))
	best := time.Duration(math.MaxInt64)
	// The best of a few runs, so that a busy shared machine does not fail the test.
	for range 5 {
		start := time.Now()
		mustBuild(t, DefaultSize, bs)
		best = min(best, time.Since(start))
	}
	if best > 100*time.Millisecond {
		t.Errorf("Build of 1,000 backends into %d slots took %v, want under 100ms", DefaultSize, best)
	}
	t.Logf("best of 5: %v", best)
}

// FuzzBuild checks Build's invariants on arbitrary backend sets: it never panics, it
// fails only for the documented reasons, and any table it returns is proportional.
func FuzzBuild(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4}, uint8(0))
	f.Add([]byte{0, 0, 0}, uint8(1))
	f.Add([]byte{255, 1, 128, 7, 0, 9}, uint8(2))
	f.Fuzz(func(t *testing.T, weights []byte, sizeChoice uint8) {
		sizes := []uint32{3, 7, 251, 4099}
		size := sizes[int(sizeChoice)%len(sizes)]
		bs := make([]Backend, len(weights))
		weighted := 0
		for i, w := range weights {
			// Shift some weights up so that sums near 2^32 per backend are covered.
			bs[i] = Backend{Key: fmt.Sprintf("k%d", i), ID: uint32(i), Weight: uint32(w) << (8 * (w % 4))}
			if w != 0 {
				weighted++
			}
		}
		table, err := Build(size, bs)
		switch {
		case weighted == 0:
			if !errors.Is(err, ErrNoBackends) {
				t.Fatalf("no weighted backends: err = %v, want ErrNoBackends", err)
			}
		case weighted > int(size):
			if !errors.Is(err, ErrInvalidBackend) {
				t.Fatalf("%d weighted backends in %d slots: err = %v, want ErrInvalidBackend", weighted, size, err)
			}
		case err != nil:
			t.Fatalf("Build: %v", err)
		default:
			checkProportional(t, size, bs, table)
		}
	})
}

func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		bs := testBackends(n, randomWeights(11))
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Build(DefaultSize, bs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
