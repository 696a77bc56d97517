package maglev

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

const (
	// DefaultSize is the table size nd uses unless configured otherwise. It is prime and
	// leaves about 65 slots per backend at a thousand backends, enough for the 1%
	// proportionality target.
	DefaultSize = 65537

	// MinSize is the smallest accepted size: the smallest prime at which backends' walks
	// can differ in skip as well as in offset.
	MinSize = 3

	// MaxSize bounds the table so that a typo in configuration cannot allocate
	// gigabytes; 2^24 slots is 64 MiB of map values, far past any sensible table.
	MaxSize = 1 << 24
)

var (
	// ErrNoBackends is returned when no backend has a positive weight, so there is
	// nothing to put in the table.
	ErrNoBackends = errors.New("maglev: no backends with positive weight")

	// ErrInvalidSize is returned, wrapped, when size is not a prime in [MinSize, MaxSize].
	ErrInvalidSize = errors.New("maglev: invalid table size")

	// ErrInvalidBackend is returned, wrapped, for duplicate Keys or IDs, empty Keys, or
	// more weighted backends than slots.
	ErrInvalidBackend = errors.New("maglev: invalid backend set")
)

// Backend is one entry competing for slots. Key is the stable identity used to derive the
// backend's permutation (e.g. "198.51.100.11"): the same Key set and weights must give the
// same table on every machine and every run, because a standby dispatcher must compute the
// same table as the active. ID is the value written into slots.
type Backend struct {
	Key    string
	ID     uint32
	Weight uint32
}

// member is a backend with positive weight, together with its fill state.
type member struct {
	id     uint32
	weight uint64
	quota  uint32 // slots it must end up with
	turns  uint32 // slots claimed so far
	pos    uint32 // next slot of its permutation to try
	skip   uint32
}

// Build returns a table of size slots holding backend IDs, in which each backend with
// positive weight holds within one slot of size·Weight/ΣWeight slots. size must be a prime
// in [MinSize, MaxSize]. Backends with weight 0 get no slots; if none has a positive
// weight, Build returns ErrNoBackends. The result depends only on the set of backends,
// not on their order in the slice.
func Build(size uint32, backends []Backend) ([]uint32, error) {
	if err := checkSize(size); err != nil {
		return nil, err
	}
	members, err := prepare(size, backends)
	if err != nil {
		return nil, err
	}
	apportion(size, members)
	return populate(size, members), nil
}

func checkSize(size uint32) error {
	if size < MinSize || size > MaxSize {
		return fmt.Errorf("%w: %d is outside [%d, %d]", ErrInvalidSize, size, MinSize, MaxSize)
	}
	if !IsPrime(size) {
		return fmt.Errorf("%w: %d is not prime", ErrInvalidSize, size)
	}
	return nil
}

// prepare validates the backends and returns the weighted ones in Key order, which is the
// only order Build ever uses, so that input order cannot leak into the table.
func prepare(size uint32, backends []Backend) ([]member, error) {
	sorted := slices.Clone(backends)
	slices.SortFunc(sorted, func(a, b Backend) int { return strings.Compare(a.Key, b.Key) })

	owners := make(map[uint32]string, len(sorted))
	for i, b := range sorted {
		if b.Key == "" {
			return nil, fmt.Errorf("%w: backend with ID %d has an empty key", ErrInvalidBackend, b.ID)
		}
		if i > 0 && sorted[i-1].Key == b.Key {
			return nil, fmt.Errorf("%w: duplicate key %q", ErrInvalidBackend, b.Key)
		}
		if other, ok := owners[b.ID]; ok {
			return nil, fmt.Errorf("%w: keys %q and %q share ID %d", ErrInvalidBackend, other, b.Key, b.ID)
		}
		owners[b.ID] = b.Key
	}

	members := make([]member, 0, len(sorted))
	for _, b := range sorted {
		if b.Weight == 0 {
			continue
		}
		members = append(members, member{
			id:     b.ID,
			weight: uint64(b.Weight),
			pos:    uint32(hashKey(b.Key, offsetSeed) % uint64(size)),
			skip:   uint32(hashKey(b.Key, skipSeed)%uint64(size-1)) + 1,
		})
	}
	if len(members) == 0 {
		return nil, ErrNoBackends
	}
	// With more backends than slots some weighted backend would silently receive no
	// traffic; that is a configuration error, not something to paper over.
	if uint64(len(members)) > uint64(size) {
		return nil, fmt.Errorf("%w: %d weighted backends do not fit in %d slots", ErrInvalidBackend, len(members), size)
	}
	return members, nil
}

// apportion sets each member's quota to its exact share size·w/Σw rounded by the
// largest-remainder method: everyone gets the floor, and the slots left over go to the
// largest fractional parts, ties to the smaller Key. The quotas sum to size and each is
// within one slot of the exact share.
//
// All arithmetic is integral, so every machine agrees: size ≤ 2^24 and weights < 2^32
// keep size·w below 2^56, and Σw ≤ 2^24·2^32 fits as well.
func apportion(size uint32, members []member) {
	var total uint64
	for _, m := range members {
		total += m.weight
	}
	remainders := make([]uint64, len(members))
	var given uint64
	for i := range members {
		share := uint64(size) * members[i].weight
		members[i].quota = uint32(share / total)
		remainders[i] = share % total
		given += uint64(members[i].quota)
	}
	left := uint64(size) - given // < len(members), since each remainder is under a slot
	if left == 0 {
		return
	}
	order := make([]int, len(members))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case remainders[a] > remainders[b]:
			return -1
		case remainders[a] < remainders[b]:
			return 1
		}
		return 0
	})
	for _, i := range order[:left] {
		members[i].quota++
	}
}

// populate fills the table by Maglev's procedure with weighted turns (see the package
// documentation). Each turn claims exactly one slot, so there are exactly size turns.
func populate(size uint32, members []member) []uint32 {
	table := make([]uint32, size)
	taken := make([]bool, size)

	h := make(turnHeap, 0, len(members))
	for i := range members {
		if members[i].quota > 0 {
			h = append(h, turn{next: 1, weight: members[i].weight, member: int32(i)})
		}
	}
	h.init()

	for len(h) > 0 {
		m := &members[h[0].member]
		// A free slot always exists here: fewer than size slots have been claimed,
		// and the walk visits every slot because size is prime. pos and skip are
		// kept in locals so this, the hottest loop, runs in registers.
		pos, skip := m.pos, m.skip
		for taken[pos] {
			if pos += skip; pos >= size { // both < size ≤ 2^24: no overflow
				pos -= size
			}
		}
		taken[pos] = true
		table[pos] = m.id
		if pos += skip; pos >= size {
			pos -= size
		}
		m.pos = pos
		m.turns++
		if m.turns == m.quota {
			h.pop()
		} else {
			h[0].next += 2
			h.down(0)
		}
	}
	return table
}

// turn is a member's next turn, due at virtual time next/(2·weight), with next = 2k+1
// for its k-th turn. The heap holds copies of the fields it compares so that sifting
// touches one contiguous array rather than chasing into members.
type turn struct {
	next   uint64
	weight uint64
	member int32
}

// turnHeap is a min-heap of turns, earliest first, ties to the smaller Key (lower
// member index, since members are in Key order). It is written out rather than built on
// container/heap to keep the hot loop free of interface calls.
type turnHeap []turn

func (h turnHeap) less(a, b int) bool {
	// Compare next_a/w_a with next_b/w_b by cross-multiplying: next ≤ 2^25 and w < 2^32
	// keep both products below 2^57, so this is exact.
	ta := h[a].next * h[b].weight
	tb := h[b].next * h[a].weight
	if ta != tb {
		return ta < tb
	}
	return h[a].member < h[b].member
}

func (h turnHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *turnHeap) pop() {
	last := len(*h) - 1
	(*h)[0] = (*h)[last]
	*h = (*h)[:last]
	if last > 0 {
		h.down(0)
	}
}

func (h turnHeap) down(i int) {
	n := len(h)
	for {
		least := i
		if l := 2*i + 1; l < n && h.less(l, least) {
			least = l
		}
		if r := 2*i + 2; r < n && h.less(r, least) {
			least = r
		}
		if least == i {
			return
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
}
