package agent

import (
	"sync"
	"time"
)

// replayCache remembers the nonces of accepted requests until their
// timestamps leave the window, after which the window check alone refuses
// them. It is bounded: when full of live nonces it refuses new requests
// rather than forget one that could then be replayed.
type replayCache struct {
	mu   sync.Mutex
	max  int
	seen map[string]time.Time // nonce -> when it may be forgotten
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: make(map[string]time.Time)}
}

// add records nonce, valid until expires. It fails with ErrReplay if the
// nonce is live already and ErrReplayFull if there is no room.
func (c *replayCache) add(nonce string, expires, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if exp, ok := c.seen[nonce]; ok && now.Before(exp) {
		return ErrReplay
	}
	if len(c.seen) >= c.max {
		for n, exp := range c.seen {
			if !now.Before(exp) {
				delete(c.seen, n)
			}
		}
		if len(c.seen) >= c.max {
			return ErrReplayFull
		}
	}
	c.seen[nonce] = expires
	return nil
}

func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
