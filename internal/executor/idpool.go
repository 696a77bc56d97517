package executor

// idPool hands out slot numbers in [0, n). Freed numbers go to the back of
// the queue, so a slot is reused as late as possible: a late packet of a
// removed server's flow is then unlikely to meet the slot's next owner (the
// generation check catches it when it does).
type idPool struct {
	free []uint32
	used map[uint32]bool
}

func newIDPool(n uint32) *idPool {
	p := &idPool{free: make([]uint32, n), used: map[uint32]bool{}}
	for i := range p.free {
		p.free[i] = uint32(i)
	}
	return p
}

func (p *idPool) get() (uint32, bool) {
	for len(p.free) > 0 {
		id := p.free[0]
		p.free = p.free[1:]
		if !p.used[id] {
			p.used[id] = true
			return id, true
		}
	}
	return 0, false
}

// take marks id as in use (recovered from pinned maps); get skips it.
func (p *idPool) take(id uint32) { p.used[id] = true }

func (p *idPool) put(id uint32) {
	if !p.used[id] {
		return
	}
	delete(p.used, id)
	p.free = append(p.free, id)
}
