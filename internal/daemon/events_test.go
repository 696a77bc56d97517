package daemon

import (
	"fmt"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// TestSlowSubscriberIsToldOfItsLoss: a subscriber that does not read loses
// what does not fit its buffer; the first event it gets after reading again
// is an EventLost counting them, then the events go on in order. Another
// subscriber that keeps up gets everything and no notice.
func TestSlowSubscriberIsToldOfItsLoss(t *testing.T) {
	h := newHub(2)
	slow, stopSlow := h.subscribe()
	defer stopSlow()
	fast, stopFast := h.subscribe()
	defer stopFast()
	ev := func(i int) nd.Event {
		return nd.Event{Time: time.Unix(int64(i), 0), Type: nd.EventError, Message: fmt.Sprint(i)}
	}
	for i := range 5 {
		h.publish(ev(i))
		if got := <-fast; got.Message != fmt.Sprint(i) {
			t.Fatalf("fast subscriber got %+v, want event %d", got, i)
		}
	}
	// slow holds events 0 and 1; 2, 3 and 4 were lost.
	for i := range 2 {
		if got := <-slow; got.Message != fmt.Sprint(i) {
			t.Fatalf("slow subscriber got %+v, want event %d", got, i)
		}
	}
	h.publish(ev(5))
	if got := <-slow; got.Type != nd.EventLost || got.Message != "3 events lost: this subscriber fell behind" {
		t.Errorf("after its loss the slow subscriber got %+v, want the notice of 3 lost", got)
	}
	if got := <-slow; got.Message != "5" {
		t.Errorf("after the notice: %+v, want event 5", got)
	}
	if got := <-fast; got.Message != "5" {
		t.Errorf("fast subscriber: %+v, want event 5", got)
	}
	select {
	case got := <-fast:
		t.Errorf("fast subscriber got more: %+v", got)
	default:
	}
	if h.dropped != 3 {
		t.Errorf("dropped %d, want 3", h.dropped)
	}
}
