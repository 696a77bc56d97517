package daemon

import (
	"fmt"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// hub fans events out to subscribers. A subscriber that does not keep up
// loses events (counted), never the daemon's time, and is told: the first
// event it gets after a loss is an EventLost saying how many.
type hub struct {
	mu      sync.Mutex
	subs    map[chan nd.Event]*uint64 // to the events the subscriber lost since it last got one
	buf     int
	dropped uint64
	recent  []nd.Event // the last few, for a subscriber that just arrived
}

func newHub(buf int) *hub {
	return &hub{subs: map[chan nd.Event]*uint64{}, buf: buf}
}

const recentEvents = 64

func (h *hub) publish(ev nd.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recent = append(h.recent, ev)
	if len(h.recent) > recentEvents {
		h.recent = h.recent[len(h.recent)-recentEvents:]
	}
	for ch, lost := range h.subs {
		if *lost > 0 {
			notice := nd.Event{Time: ev.Time, Type: nd.EventLost,
				Message: fmt.Sprintf("%d events lost: this subscriber fell behind", *lost)}
			select {
			case ch <- notice:
				*lost = 0
			default:
				*lost++
				h.dropped++
				continue
			}
		}
		select {
		case ch <- ev:
		default:
			*lost++
			h.dropped++
		}
	}
}

// subscribe returns a channel of events, starting with the recent ones, and
// a function that ends the subscription.
func (h *hub) subscribe() (<-chan nd.Event, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := make(chan nd.Event, h.buf+len(h.recent))
	for _, ev := range h.recent {
		ch <- ev
	}
	h.subs[ch] = new(uint64)
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, ch)
			h.mu.Unlock()
			close(ch)
		})
	}
}

// Events subscribes to the daemon's events.
func (d *Daemon) Events() (<-chan nd.Event, func()) { return d.events.subscribe() }

// emit logs and publishes an event.
func (d *Daemon) emit(ev nd.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	d.log.Info("event", "type", ev.Type, "service", ev.Service, "server", ev.Server, "message", ev.Message)
	d.events.publish(ev)
}
