package maglev

// IsPrime reports whether n is prime. A Maglev table size must be prime so that every
// skip in [1, size-1] is coprime with size and each backend's walk visits every slot.
//
// Trial division by 6k±1 up to √n is at most about 11,000 divisions for a uint32, which
// is negligible next to building a table, and is obviously correct.
func IsPrime(n uint32) bool {
	switch {
	case n < 2:
		return false
	case n < 4:
		return true
	case n%2 == 0 || n%3 == 0:
		return false
	}
	m := uint64(n)
	for d := uint64(5); d*d <= m; d += 6 {
		if m%d == 0 || m%(d+2) == 0 {
			return false
		}
	}
	return true
}
