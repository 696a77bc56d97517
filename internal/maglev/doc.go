// Package maglev builds weighted Maglev consistent-hash lookup tables.
//
// The dispatcher's XDP program picks a backend by reading slot hash(5-tuple) % size of a
// BPF array map. This package computes that array in Go. Three properties matter, and the
// design follows from them:
//
// Proportionality. A backend's share of slots is its share of traffic, so it must track
// its weight closely even with a thousand backends. Each backend's slot count, its quota,
// is therefore decided before any slot is filled: size·w/Σw rounded by largest-remainder
// apportionment, which puts every backend within one slot of its exact share for any
// weights. (Giving heavier backends proportionally more turns, alone, comes close, but
// with extreme weight sets can miss a mid-sized backend's share by more than a slot.)
// The filling below decides only which slots a backend gets, never how many.
//
// Low disruption. Each slot that changes owner breaks the connections hashed to it, so a
// weight change on one backend should move about as many slots as that backend's share
// changed and no more. The table is filled as in Maglev: every backend walks its own
// permutation of the slots (offset and skip taken from two independent hashes of its
// Key) and claims the next free slot on each of its turns. Turns are scheduled like
// stride scheduling on the weights: a backend's k-th turn falls at virtual time
// (k+½)/weight, ties going to the smaller Key. A backend therefore claims slots at the
// rate its weight asks for throughout the fill, and all backends reach their quotas at
// about the same moment; no backend is left to sweep up the last free slots in bulk. When
// one backend's weight changes, the others' turn times do not change at all: only that
// backend's turns move, and each other backend stops a turn or so earlier or later
// because its quota moved. The cascade of displaced claims that follows is the ordinary
// Maglev one (with equal weights Build is exactly classic Maglev): at 65537 slots it adds
// about 0.3–0.6% of the table to each change, a smaller fraction in bigger tables. See
// TestDisruption for the figures.
//
// Determinism. An active and a standby dispatcher must compute identical tables from
// the same configuration, so Build depends only on the set of (Key, ID, Weight) values:
// backends are sorted by Key, nothing is randomised, no map is iterated, and the hash is
// a fixed function written here. Changing the hash seeds, the tie-break rules or the
// apportionment changes every table and must be treated as an incompatible change
// between dispatcher versions; TestGoldenTable pins the current output.
package maglev
