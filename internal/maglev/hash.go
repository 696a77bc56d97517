package maglev

// The two permutation parameters need hashes of the Key that are independent of each
// other; otherwise backends whose offsets collide would also share skips and fight over
// the same slots for the whole fill. FNV-1a alone mixes short, similar keys (IP
// addresses differing in one digit) poorly in the high bits, so its result goes through
// a full 64-bit finaliser as well.
const (
	fnvOffset64 = 0xcbf29ce484222325
	fnvPrime64  = 0x100000001b3

	// Arbitrary fixed seeds. Changing either changes every table ever built.
	offsetSeed = 0x6e642d6f66667365 // "nd-offse"
	skipSeed   = 0x6e642d736b697070 // "nd-skipp"
)

// hashKey returns a 64-bit hash of key under seed. The seed perturbs FNV's starting
// state so that the two seeded hashes of one key are unrelated, and the length is folded
// in before finalising so that keys differing only by trailing zero bytes still differ.
func hashKey(key string, seed uint64) uint64 {
	h := uint64(fnvOffset64) ^ mix64(seed)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= fnvPrime64
	}
	return mix64(h ^ uint64(len(key)))
}

// mix64 is a bijective avalanche finaliser (xor-shift-multiply rounds with the
// constants of splitmix64), so every input bit affects every output bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
