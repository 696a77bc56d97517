// Package maglev builds weighted Maglev consistent-hash lookup tables.
//
// The dispatcher's XDP program picks a backend by reading slot hash(5-tuple) % size of a
// BPF array map. This package computes that array in Go. Two properties matter, and the
// design follows from them:
//
// Proportionality. A backend's share of slots is its share of traffic, so it must track
// its weight closely even with a thousand backends. Classic Maglev gives every backend
// the same number of turns and only approximates equal shares; weighted variants that
// merely give heavier backends more turns drift further. Here the slot count is decided
// up front: each backend's quota is size·w/Σw rounded by largest-remainder apportionment,
// so every backend ends within one slot of its exact share, and the table filling below
// only decides which slots, never how many.
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
// Maglev one, which stays small.
//
// Determinism. An active and a standby dispatcher must compute identical tables from
// the same configuration, so Build depends only on the set of (Key, ID, Weight) values:
// backends are sorted by Key, nothing is randomised, no map is iterated, and the hash is
// a fixed function written here. Changing the hash seeds, the tie-break rules or the
// apportionment changes every table and must be treated as an incompatible change
// between dispatcher versions; TestGoldenTable pins the current output.
package maglev
