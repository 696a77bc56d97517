package executor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

// The Fake's tests use their own small world so that they do not depend on
// the kernel harness.
var (
	fkVIP    = netip.MustParseAddr("198.51.100.100")
	fkVIP6   = netip.MustParseAddr("2001:db8::100")
	fkClient = netip.MustParseAddr("203.0.113.7")
	fkS1     = netip.MustParseAddr("198.51.100.11")
	fkS2     = netip.MustParseAddr("198.51.100.12")
	fkS3     = netip.MustParseAddr("198.51.100.13")
	fkS4     = netip.MustParseAddr("198.51.100.14")
	fkHTTP   = ServiceKey{VIP: fkVIP, Port: 80, Proto: TCP}
)

func fkServer(addr netip.Addr, weight uint32) Server {
	b := addr.As16()
	return Server{Addr: addr, MAC: net.HardwareAddr{2, 0, 0, 0, 0, b[15]}, Ifindex: 7, Weight: weight}
}

// fkFlow is the flow of client port port to service key.
func fkFlow(key ServiceKey, client netip.Addr, port uint16) FlowKey {
	return FlowKey{Client: netip.AddrPortFrom(client, port), VIP: netip.AddrPortFrom(key.VIP, key.Port), Proto: key.Proto}
}

// fkManyFlows returns n distinct flows to key from many clients.
func fkManyFlows(key ServiceKey, n int) []FlowKey {
	out := make([]FlowKey, n)
	for i := range out {
		client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 200)})
		out[i] = fkFlow(key, client, uint16(20000+i))
	}
	return out
}

func fkNew(t *testing.T, services ...Service) *Fake {
	t.Helper()
	f := NewFake()
	for _, s := range services {
		if err := f.UpsertService(s); err != nil {
			t.Fatalf("upsert %v: %v", s.Key, err)
		}
	}
	return f
}

func fkDispatch(t *testing.T, f *Fake, k FlowKey, syn, closing bool) netip.Addr {
	t.Helper()
	got, err := f.Dispatch(k, syn, closing)
	if err != nil {
		t.Fatalf("dispatch %v: %v", k, err)
	}
	return got
}

func fkStats(t *testing.T, f *Fake) Stats {
	t.Helper()
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestFakeWeightedDistribution(t *testing.T) {
	weights := map[netip.Addr]uint32{fkS1: 1, fkS2: 2, fkS3: 3, fkS4: 4}
	var servers []Server
	for addr, w := range weights {
		servers = append(servers, fkServer(addr, w))
	}
	f := fkNew(t, Service{Key: fkHTTP, Servers: servers})

	const n = 20000
	got := map[netip.Addr]int{}
	for _, k := range fkManyFlows(fkHTTP, n) {
		got[fkDispatch(t, f, k, true, false)]++
	}
	for addr, w := range weights {
		want := float64(n) * float64(w) / 10
		if math.Abs(float64(got[addr])-want) > 0.1*want {
			t.Errorf("server %v (weight %d) got %d flows, want %.0f ± 10%%", addr, w, got[addr], want)
		}
	}
	st := fkStats(t, f).Services[fkHTTP]
	for addr, c := range got {
		if s := st.Servers[addr]; s.HalfOpenOpened != uint64(c) || s.HalfOpen != uint64(c) || s.Packets != uint64(c) || s.Bytes != uint64(c)*FakePacketBytes {
			t.Errorf("counters of %v = %+v, want %d half-open flows and packets", addr, s, c)
		}
	}
}

func TestFakeQuiesce(t *testing.T) {
	f := fkNew(t, Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS2, 1), fkServer(fkS3, 1)}})
	flows := fkManyFlows(fkHTTP, 300)
	owner := map[FlowKey]netip.Addr{}
	for _, k := range flows {
		owner[k] = fkDispatch(t, f, k, true, false)
	}
	if err := f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS1: 0}); err != nil {
		t.Fatal(err)
	}
	for k, want := range owner {
		if got := fkDispatch(t, f, k, false, false); got != want {
			t.Fatalf("flow %v moved from %v to %v after quiesce", k, want, got)
		}
	}
	for i := range 300 {
		k := fkFlow(fkHTTP, fkClient, uint16(40000+i))
		if got := fkDispatch(t, f, k, true, false); got == fkS1 {
			t.Fatalf("new flow %v went to quiesced %v", k, fkS1)
		}
	}
	active, err := f.ActiveFlows()
	if err != nil {
		t.Fatal(err)
	}
	var onS1 int
	for _, a := range owner {
		if a == fkS1 {
			onS1++
		}
	}
	if onS1 == 0 || active[fkHTTP][fkS1] != onS1 {
		t.Errorf("quiesced %v holds %d active flows, want its %d established ones", fkS1, active[fkHTTP][fkS1], onS1)
	}

	// Quiesce everyone: new flows are dropped and counted, established
	// ones keep going.
	if err := f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS2: 0, fkS3: 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Dispatch(fkFlow(fkHTTP, fkClient, 50000), true, false); !errors.Is(err, ErrNoServer) {
		t.Fatalf("new flow with every server quiesced: %v, want ErrNoServer", err)
	}
	if n := fkStats(t, f).Services[fkHTTP].NoServer; n != 1 {
		t.Errorf("NoServer = %d, want 1", n)
	}
	if got := fkDispatch(t, f, flows[0], false, false); got != owner[flows[0]] {
		t.Errorf("established flow went to %v with every server quiesced, want %v", got, owner[flows[0]])
	}
}

func TestFakeRemoveServer(t *testing.T) {
	svc := Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS2, 1), fkServer(fkS3, 1)}}
	f := fkNew(t, svc)
	owner := map[FlowKey]netip.Addr{}
	onS2 := 0
	for _, k := range fkManyFlows(fkHTTP, 300) {
		owner[k] = fkDispatch(t, f, k, true, false)
		fkDispatch(t, f, k, false, false) // established
		if owner[k] == fkS2 {
			onS2++
		}
	}

	// Remove s2 and rewrite s3 in place (new MAC): s3 keeps its flows and
	// counters, s2's flows are gone from the table and dispatched anew.
	s3 := fkServer(fkS3, 1)
	s3.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 0x33}
	before := fkStats(t, f).Services[fkHTTP].Servers
	if err := f.UpsertService(Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), s3}}); err != nil {
		t.Fatal(err)
	}
	after := fkStats(t, f).Services[fkHTTP].Servers
	if _, ok := after[fkS2]; ok {
		t.Errorf("removed %v still has counters", fkS2)
	}
	if after[fkS3] != before[fkS3] || after[fkS1] != before[fkS1] {
		t.Errorf("counters of remaining servers changed: %+v -> %+v", before, after)
	}
	for k, was := range owner {
		_, ok, err := f.LookupFlow(k)
		if err != nil {
			t.Fatal(err)
		}
		if ok != (was != fkS2) {
			t.Fatalf("flow %v of %v: in table = %v after removing %v", k, was, ok, fkS2)
		}
	}
	for k, was := range owner {
		got := fkDispatch(t, f, k, false, false)
		switch {
		case was != fkS2 && got != was:
			t.Fatalf("flow %v moved from %v to %v", k, was, got)
		case was == fkS2 && got == fkS2:
			t.Fatalf("flow %v still went to removed %v", k, fkS2)
		}
		owner[k] = got
	}
	after = fkStats(t, f).Services[fkHTTP].Servers
	// Their next packets, strays now, record them half-open.
	if moved := after[fkS1].HalfOpenOpened + after[fkS3].HalfOpenOpened - before[fkS1].HalfOpenOpened - before[fkS3].HalfOpenOpened; moved != uint64(onS2) {
		t.Errorf("%d flows dispatched anew, want the %d of %v", moved, onS2, fkS2)
	}

	// Adding s2 back starts its counters from zero and moves no
	// established flow.
	if err := f.UpsertService(svc); err != nil {
		t.Fatal(err)
	}
	if s := fkStats(t, f).Services[fkHTTP].Servers[fkS2]; s != (ServerStats{}) {
		t.Errorf("counters of re-added %v = %+v, want zero", fkS2, s)
	}
	for k, was := range owner {
		if got := fkDispatch(t, f, k, false, false); got != was {
			t.Fatalf("flow %v moved from %v to %v when %v came back", k, was, got, fkS2)
		}
	}

	// Removed and added again at once: the entries that named the server
	// stay stale, as in the kernel, where the server gets a new slot.
	var k FlowKey
	for k = range owner {
		if owner[k] == fkS1 {
			break
		}
	}
	if err := f.UpsertService(Service{Key: fkHTTP, Servers: []Server{fkServer(fkS2, 1), fkServer(fkS3, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := f.UpsertService(svc); err != nil {
		t.Fatal(err)
	}
	if fl, ok, _ := f.LookupFlow(k); ok {
		t.Errorf("flow %v of a removed server revived: %+v", k, fl)
	}
}

func TestFakeFlowTable(t *testing.T) {
	dns := ServiceKey{VIP: fkVIP, Port: 53, Proto: UDP}
	f := fkNew(t,
		Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS2, 1)}},
		Service{Key: dns, Servers: []Server{fkServer(fkS3, 1)}},
	)
	good := []Flow{
		{Key: fkFlow(fkHTTP, fkClient, 1000), Server: fkS1},
		{Key: fkFlow(fkHTTP, fkClient, 1001), Server: fkS2, Idle: 42 * time.Second, Closing: true},
		{Key: fkFlow(dns, fkClient, 1002), Server: fkS3, Idle: time.Second},
	}
	bad := []Flow{
		{Key: fkFlow(ServiceKey{VIP: fkVIP, Port: 81, Proto: TCP}, fkClient, 1003), Server: fkS1}, // no such service
		{Key: fkFlow(fkHTTP, fkClient, 1004), Server: fkS3},                                       // not a server of it
		{Key: FlowKey{Client: netip.AddrPortFrom(fkClient, 1005), VIP: netip.AddrPortFrom(fkVIP6, 80), Proto: TCP}, Server: fkS1},
	}
	err := f.UpsertFlows(append(slices.Clone(bad[:2]), append(good, bad[2])...))
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpsertFlows with bad entries: %v, want ErrNotFound and ErrInvalid", err)
	}
	var got []Flow
	if err := f.Flows(func(fl Flow) bool { got = append(got, fl); return true }); err != nil {
		t.Fatal(err)
	}
	want := []Flow{good[2], good[0], good[1]} // sorted by VIP:port, protocol, client
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Flows = %+v\nwant %+v", got, want)
	}
	for _, fl := range bad[:2] {
		if _, ok, err := f.LookupFlow(fl.Key); ok || err != nil {
			t.Errorf("rejected flow %v: LookupFlow = %v, %v", fl.Key, ok, err)
		}
	}

	// Time runs only when told to, so Idle is exact.
	f.Advance(3 * time.Second)
	fl, ok, err := f.LookupFlow(good[1].Key)
	if err != nil || !ok || fl.Server != fkS2 || !fl.Closing || fl.Idle != 45*time.Second {
		t.Fatalf("LookupFlow = %+v, %v, %v, want %v closing, idle 45s", fl, ok, err, fkS2)
	}

	// A written entry steers its flow, wherever the ring would send it.
	k := good[0].Key
	for _, srv := range []netip.Addr{fkS1, fkS2} {
		if err := f.UpsertFlows([]Flow{{Key: k, Server: srv}}); err != nil {
			t.Fatal(err)
		}
		if got := fkDispatch(t, f, k, false, false); got != srv {
			t.Fatalf("flow written to %v went to %v", srv, got)
		}
	}
	if st := fkStats(t, f).Services[fkHTTP].Servers; st[fkS1].NewFlows+st[fkS2].NewFlows != 0 {
		t.Errorf("written flows counted as new: %+v", st)
	}

	// fn may call back into the Fake, and false stops the walk.
	var seen int
	if err := f.Flows(func(fl Flow) bool {
		seen++
		if err := f.DeleteFlow(fl.Key); err != nil {
			t.Errorf("delete %v inside Flows: %v", fl.Key, err)
		}
		return seen < 2
	}); err != nil {
		t.Fatal(err)
	}
	if seen != 2 {
		t.Errorf("Flows went on after false: %d calls", seen)
	}
	if _, ok, _ := f.LookupFlow(good[2].Key); ok {
		t.Errorf("deleted flow %v still there", good[2].Key)
	}
	if err := f.DeleteFlow(good[2].Key); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting a deleted flow: %v, want ErrNotFound", err)
	}
}

func TestFakeSetWeightsUnknown(t *testing.T) {
	svc := Service{Key: fkHTTP, StickyTime: 30 * time.Second, Servers: []Server{fkServer(fkS1, 5), fkServer(fkS2, 5)}}
	f := fkNew(t, svc)
	k := fkFlow(fkHTTP, fkClient, 1000)
	first := fkDispatch(t, f, k, true, false)
	before, commits := f.Services(), f.Commits()

	err := f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS1: 0, fkS3: 1})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetWeights naming an unknown server: %v, want ErrNotFound", err)
	}
	if err := f.SetWeights(ServiceKey{VIP: fkVIP, Port: 81, Proto: TCP}, map[netip.Addr]uint32{fkS1: 0}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetWeights of an unknown service: %v, want ErrNotFound", err)
	}
	if got := f.Services(); !reflect.DeepEqual(got, before) {
		t.Errorf("services changed by a failed SetWeights:\n got %+v\nwant %+v", got, before)
	}
	if f.Commits() != commits {
		t.Errorf("failed SetWeights counted as commit")
	}
	for i := range 100 {
		if got := fkDispatch(t, f, fkFlow(fkHTTP, fkClient, uint16(2000+i)), true, false); got != first {
			t.Fatalf("sticky client moved from %v to %v after failed SetWeights", first, got)
		}
	}
}

func TestFakeValidation(t *testing.T) {
	f := NewFake()
	good := fkServer(fkS1, 1)
	noMAC := good
	noMAC.MAC = nil
	for _, s := range []Service{
		{Key: ServiceKey{Port: 80, Proto: TCP}},
		{Key: ServiceKey{VIP: fkVIP, Port: 0, Proto: TCP}},
		{Key: ServiceKey{VIP: fkVIP, Port: 80, Proto: 1}},
		{Key: fkHTTP, StickyTime: 1500 * time.Millisecond},
		{Key: fkHTTP, Servers: []Server{good, good}},
		{Key: fkHTTP, Servers: []Server{noMAC}},
		{Key: ServiceKey{VIP: fkVIP6, Port: 80, Proto: TCP}, Servers: []Server{good}},
	} {
		if err := f.UpsertService(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("UpsertService(%+v) = %v, want ErrInvalid", s, err)
		}
	}
	if n := len(f.Services()); n != 0 || f.Commits() != 0 {
		t.Fatalf("invalid services installed: %d, %d commits", n, f.Commits())
	}
	if err := f.DeleteService(fkHTTP); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteService of unknown: %v, want ErrNotFound", err)
	}

	badKey := FlowKey{Client: netip.AddrPortFrom(fkClient, 1), VIP: netip.AddrPortFrom(fkVIP6, 80), Proto: TCP}
	if _, err := f.Dispatch(badKey, true, false); !errors.Is(err, ErrInvalid) {
		t.Errorf("Dispatch mixed families: %v, want ErrInvalid", err)
	}
	if _, _, err := f.LookupFlow(badKey); !errors.Is(err, ErrInvalid) {
		t.Errorf("LookupFlow mixed families: %v, want ErrInvalid", err)
	}
	if err := f.DeleteFlow(badKey); !errors.Is(err, ErrInvalid) {
		t.Errorf("DeleteFlow mixed families: %v, want ErrInvalid", err)
	}
	if err := f.AddCounters(fkHTTP, fkS1, ServerStats{Packets: 1}); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddCounters of unknown service: %v, want ErrNotFound", err)
	}

	for _, ifindex := range []int{0, -1} {
		if err := f.Attach(ifindex); !errors.Is(err, ErrInvalid) {
			t.Errorf("Attach(%d) = %v, want ErrInvalid", ifindex, err)
		}
	}
	for _, ifindex := range []int{5, 2, 9, 2} {
		if err := f.Attach(ifindex); err != nil {
			t.Fatalf("Attach(%d): %v", ifindex, err)
		}
	}
	if err := f.Detach(9); err != nil {
		t.Fatal(err)
	}
	if err := f.Detach(9); !errors.Is(err, ErrNotFound) {
		t.Errorf("Detach of a detached interface: %v, want ErrNotFound", err)
	}
	if got := f.Attached(); !slices.Equal(got, []int{2, 5}) {
		t.Errorf("Attached() = %v, want [2 5]", got)
	}

	for _, size := range []uint32{0, 1000, 1 << 25} {
		if _, err := NewFakeSize(size); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewFakeSize(%d) = %v, want ErrInvalid", size, err)
		}
	}
}

func TestFakeStatsAndActiveFlows(t *testing.T) {
	dns := ServiceKey{VIP: fkVIP, Port: 53, Proto: UDP}
	f := fkNew(t,
		Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1)}},
		Service{Key: dns, Servers: []Server{fkServer(fkS2, 1)}},
	)
	a, b, c := fkFlow(fkHTTP, fkClient, 1), fkFlow(fkHTTP, fkClient, 2), fkFlow(fkHTTP, fkClient, 3)
	fkDispatch(t, f, a, true, false)  // SYN: half-open
	fkDispatch(t, f, a, false, false) // ACK: established, a new flow
	fkDispatch(t, f, a, false, true)  // FIN: closed
	fkDispatch(t, f, a, false, true)  // retransmitted FIN: counted once
	fkDispatch(t, f, a, true, false)  // SYN on the closed tuple: half-open
	fkDispatch(t, f, b, true, false)
	fkDispatch(t, f, c, false, true)                                  // a FIN of an unknown flow: forwarded, nothing recorded
	if _, err := f.DispatchBytes(b, false, false, 1500); err != nil { // establishes b
		t.Fatal(err)
	}
	// UDP ignores the TCP flags.
	u := fkFlow(dns, fkClient, 5353)
	fkDispatch(t, f, u, true, true)
	fkDispatch(t, f, u, true, true)
	// Not a service: a VIP's undefined port, and no VIP at all.
	if _, err := f.Dispatch(fkFlow(ServiceKey{VIP: fkVIP, Port: 443, Proto: TCP}, fkClient, 9), true, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("undefined port: %v, want ErrNotFound", err)
	}
	other := ServiceKey{VIP: netip.MustParseAddr("198.51.100.200"), Port: 80, Proto: TCP}
	if _, err := f.Dispatch(fkFlow(other, fkClient, 9), true, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("not a VIP: %v, want ErrNotFound", err)
	}

	st := fkStats(t, f)
	want := Stats{
		Services: map[ServiceKey]ServiceStats{
			fkHTTP: {Packets: 8, Bytes: 7*64 + 1500, Servers: map[netip.Addr]ServerStats{
				fkS1: {NewFlows: 2, Packets: 8, Bytes: 7*64 + 1500, Closed: 1, HalfOpenOpened: 3, HalfOpen: 1},
			}},
			dns: {Packets: 2, Bytes: 128, Servers: map[netip.Addr]ServerStats{
				fkS2: {NewFlows: 1, Packets: 2, Bytes: 128},
			}},
		},
		VIPs:   map[netip.Addr]VIPStats{fkVIP: {Filtered: 1}},
		Global: GlobalStats{Passed: 1},
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("Stats = %+v\nwant %+v", st, want)
	}
	wantActive := map[ServiceKey]map[netip.Addr]int{fkHTTP: {fkS1: 1}, dns: {fkS2: 1}}
	if got, err := f.ActiveFlows(); err != nil || !reflect.DeepEqual(got, wantActive) {
		t.Fatalf("ActiveFlows = %v, %v, want %v", got, err, wantActive)
	}
	if got := st.Services[fkHTTP].Servers[fkS1].Active(); got != 1 {
		t.Errorf("counters estimate %d active flows, want 1", got)
	}

	// Idle past the timeout: no longer active, and the next packet counts
	// the flow expired (a half-open one leaves the half-open count) and
	// records a new one, established by the packet after.
	f.Advance(200 * time.Second)
	fkDispatch(t, f, a, false, false)
	fkDispatch(t, f, a, false, false)
	f.Advance(200 * time.Second)
	wantActive = map[ServiceKey]map[netip.Addr]int{fkHTTP: {fkS1: 1}}
	if got, _ := f.ActiveFlows(); !reflect.DeepEqual(got, wantActive) {
		t.Fatalf("ActiveFlows after 400s = %v, want %v", got, wantActive)
	}
	fkDispatch(t, f, b, false, false)
	fkDispatch(t, f, c, false, false) // unknown: half-open
	s := fkStats(t, f).Services[fkHTTP].Servers[fkS1]
	if s.Expired != 1 || s.NewFlows != 3 || s.Active() != 1 || s.HalfOpen != 2 {
		t.Errorf("after idle expiry %+v, want 1 expired, 3 new flows, 1 active, 2 half-open", s)
	}

	// AddCounters feeds a server's and its service's counters.
	if err := f.AddCounters(dns, fkS2, ServerStats{NewFlows: 10, Packets: 20, Bytes: 3000, Closed: 4, Expired: 1}); err != nil {
		t.Fatal(err)
	}
	if err := f.AddCounters(dns, fkS1, ServerStats{Packets: 1}); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddCounters of unknown server: %v, want ErrNotFound", err)
	}
	ds := fkStats(t, f).Services[dns]
	if ds.Packets != 22 || ds.Bytes != 3128 || ds.Servers[fkS2] != (ServerStats{NewFlows: 11, Packets: 22, Bytes: 3128, Closed: 4, Expired: 1}) {
		t.Errorf("after AddCounters %+v", ds)
	}

	// A service deleted and installed again starts from zero; its VIP
	// goes with its last service.
	if err := f.DeleteService(dns); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteService(fkHTTP); err != nil {
		t.Fatal(err)
	}
	if st := fkStats(t, f); len(st.Services) != 0 || len(st.VIPs) != 0 {
		t.Fatalf("after deleting every service: %+v", st)
	}
	if err := f.UpsertService(Service{Key: dns, Servers: []Server{fkServer(fkS2, 1)}}); err != nil {
		t.Fatal(err)
	}
	if ds := fkStats(t, f).Services[dns]; ds.Packets != 0 || ds.Servers[fkS2] != (ServerStats{}) {
		t.Errorf("re-created service counters %+v, want zero", ds)
	}
	if _, ok, _ := f.LookupFlow(u); ok {
		t.Errorf("flow of a deleted service survived its re-creation")
	}
}

func TestFakeAffinity(t *testing.T) {
	svc := Service{Key: fkHTTP, StickyTime: 60 * time.Second, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS2, 1), fkServer(fkS3, 1), fkServer(fkS4, 1)}}
	f := fkNew(t, svc)
	clients := map[netip.Addr]netip.Addr{}
	for i := range 40 {
		c := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		clients[c] = fkDispatch(t, f, fkFlow(fkHTTP, c, 1000), true, false)
		for p := range uint16(10) {
			if got := fkDispatch(t, f, fkFlow(fkHTTP, c, 2000+p), true, false); got != clients[c] {
				t.Fatalf("client %v: new flow went to %v, sticky server %v", c, got, clients[c])
			}
		}
	}

	// A quiesced sticky server takes no new flows of its clients.
	if err := f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS1: 0}); err != nil {
		t.Fatal(err)
	}
	for c, was := range clients {
		got := fkDispatch(t, f, fkFlow(fkHTTP, c, 3000), true, false)
		if was != fkS1 && got != was || got == fkS1 {
			t.Fatalf("client %v: sticky %v, new flow went to %v", c, was, got)
		}
		clients[c] = got
	}

	// The window runs from the client's last packet or new flow; past it
	// the ring decides again, exactly as for a service without affinity.
	if err := f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS1: 1}); err != nil {
		t.Fatal(err)
	}
	f.Advance(59 * time.Second)
	for c, was := range clients {
		if got := fkDispatch(t, f, fkFlow(fkHTTP, c, 4000), true, false); got != was {
			t.Fatalf("client %v within its window went to %v, sticky %v", c, got, was)
		}
	}
	f.Advance(61 * time.Second)
	plain := fkNew(t, Service{Key: fkHTTP, Servers: svc.Servers})
	moved := 0
	for c, was := range clients {
		k := fkFlow(fkHTTP, c, 5000)
		want := fkDispatch(t, plain, k, true, false)
		if got := fkDispatch(t, f, k, true, false); got != want {
			t.Fatalf("client %v past its window went to %v, the ring says %v", c, got, want)
		}
		if want != was {
			moved++
		}
	}
	if moved == 0 {
		t.Errorf("no client changed server after its window: the test shows nothing")
	}
}

func TestFakeCommits(t *testing.T) {
	svc := Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS2, 2)}}
	f := NewFake()
	steps := []struct {
		name    string
		do      func() error
		commits int
	}{
		{"install", func() error { return f.UpsertService(svc) }, 1},
		{"same again", func() error { return f.UpsertService(svc) }, 1},
		{"same, servers reordered", func() error {
			return f.UpsertService(Service{Key: fkHTTP, Servers: []Server{svc.Servers[1], svc.Servers[0]}})
		}, 1},
		{"same weights", func() error { return f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS1: 1}) }, 1},
		{"no weights", func() error { return f.SetWeights(fkHTTP, nil) }, 1},
		{"new weight", func() error { return f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS1: 3}) }, 2},
		{"sticky time", func() error {
			return f.UpsertService(Service{Key: fkHTTP, StickyTime: time.Second, Servers: svc.Servers})
		}, 3},
		{"server added", func() error {
			return f.UpsertService(Service{Key: fkHTTP, Servers: append(slices.Clone(svc.Servers), fkServer(fkS3, 1))})
		}, 4},
		{"server swapped", func() error {
			return f.UpsertService(Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS4, 1), fkServer(fkS3, 1)}})
		}, 5},
		{"unknown server", func() error { return f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS2: 1}) }, 5},
		{"delete", func() error { return f.DeleteService(fkHTTP) }, 6},
		{"delete again", func() error { return f.DeleteService(fkHTTP) }, 6},
	}
	for _, s := range steps {
		_ = s.do()
		if got := f.Commits(); got != s.commits {
			t.Fatalf("%s: %d commits, want %d", s.name, got, s.commits)
		}
	}
}

func TestFakeClose(t *testing.T) {
	f := fkNew(t, Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1)}})
	if err := f.Attach(3); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	k := fkFlow(fkHTTP, fkClient, 1)
	calls := map[string]error{
		"Close":         f.Close(),
		"Attach":        f.Attach(4),
		"Detach":        f.Detach(3),
		"UpsertService": f.UpsertService(Service{Key: fkHTTP}),
		"DeleteService": f.DeleteService(fkHTTP),
		"SetWeights":    f.SetWeights(fkHTTP, nil),
		"UpsertFlows":   f.UpsertFlows(nil),
		"DeleteFlow":    f.DeleteFlow(k),
		"Flows":         f.Flows(func(Flow) bool { return true }),
		"AddCounters":   f.AddCounters(fkHTTP, fkS1, ServerStats{}),
	}
	_, calls["Stats"] = f.Stats()
	_, calls["ActiveFlows"] = f.ActiveFlows()
	_, calls["ActiveCounts"] = f.ActiveCounts()
	calls["ReconcileActive"] = f.ReconcileActive()
	_, calls["FlowEvents"] = f.FlowEvents(context.Background())
	_, _, calls["LookupFlow"] = f.LookupFlow(k)
	_, calls["Dispatch"] = f.Dispatch(k, true, false)
	for name, err := range calls {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if s := f.Services(); s != nil {
		t.Errorf("Services after Close = %v", s)
	}
	if a := f.Attached(); len(a) != 0 {
		t.Errorf("still attached after Close: %v", a)
	}
}

// TestFakeConcurrent is for go test -race: packets, control calls and
// readers at once.
func TestFakeConcurrent(t *testing.T) {
	f := fkNew(t, Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS2, 1), fkServer(fkS3, 1)}})
	flows := fkManyFlows(fkHTTP, 500)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i, k := range flows {
				if _, err := f.Dispatch(k, i%7 == 0, i%11 == 0); err != nil {
					t.Errorf("dispatch %v: %v", k, err)
					return
				}
				if i%50 == g {
					f.Advance(time.Second)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 100 {
			w := uint32(i % 3)
			if err := f.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS1: w + 1, fkS2: 3 - w}); err != nil {
				t.Errorf("set weights: %v", err)
				return
			}
			if err := f.AddCounters(fkHTTP, fkS3, ServerStats{Packets: 1}); err != nil {
				t.Errorf("add counters: %v", err)
				return
			}
		}
	})
	wg.Go(func() {
		other := ServiceKey{VIP: fkVIP, Port: 8080, Proto: TCP}
		for i := range 100 {
			if err := f.UpsertService(Service{Key: other, Servers: []Server{fkServer(fkS4, uint32(i+1))}}); err != nil {
				t.Errorf("upsert: %v", err)
				return
			}
			if i%10 == 9 {
				if err := f.DeleteService(other); err != nil {
					t.Errorf("delete: %v", err)
					return
				}
			}
			if err := f.UpsertFlows([]Flow{{Key: fkFlow(fkHTTP, fkClient, uint16(i)), Server: fkS3}}); err != nil {
				t.Errorf("upsert flows: %v", err)
				return
			}
		}
	})
	wg.Go(func() {
		for range 50 {
			if _, err := f.Stats(); err != nil {
				t.Errorf("stats: %v", err)
			}
			if _, err := f.ActiveFlows(); err != nil {
				t.Errorf("active flows: %v", err)
			}
			_ = f.Flows(func(fl Flow) bool { _, _, _ = f.LookupFlow(fl.Key); return true })
			_ = f.Services()
			_ = f.Commits()
		}
	})
	wg.Wait()

	st := fkStats(t, f).Services[fkHTTP]
	var sum uint64
	for _, s := range st.Servers {
		sum += s.Packets
	}
	if want := uint64(4*len(flows) + 100); st.Packets != want || sum != want {
		t.Errorf("service counted %d packets, servers %d, want %d", st.Packets, sum, want)
	}
}

// TestFakeMatchesKernel runs one script of packets and control calls through
// the data plane and through a Fake of the same ring size, and expects the
// same servers, counters and connection tables. It needs root.
func TestFakeMatchesKernel(t *testing.T) {
	const ringSize = 1009
	h := newHarness(t, Config{MaxFlows: 1 << 16, RingSize: ringSize})
	f, err := NewFakeSize(ringSize)
	if err != nil {
		t.Fatal(err)
	}
	dns := ServiceKey{VIP: fkVIP, Port: 53, Proto: UDP}
	sticky := ServiceKey{VIP: fkVIP, Port: 443, Proto: TCP}
	srv := func(addr netip.Addr, w uint32) Server {
		s := fkServer(addr, w)
		s.Ifindex = h.in
		return s
	}
	both := func(what string, fn func(Executor) error) {
		t.Helper()
		if err := fn(f); err != nil {
			t.Fatalf("fake: %s: %v", what, err)
		}
		h.do(func() error { return fn(h.x) })
	}
	upsert := func(s Service) { both("upsert "+s.Key.String(), func(x Executor) error { return x.UpsertService(s) }) }
	upsert(Service{Key: fkHTTP, Servers: []Server{srv(fkS1, 1), srv(fkS2, 2), srv(fkS3, 3), srv(fkS4, 4)}})
	upsert(Service{Key: dns, Servers: []Server{srv(fkS1, 1), srv(fkS2, 1)}})
	upsert(Service{Key: sticky, StickyTime: time.Minute, Servers: []Server{srv(fkS3, 1), srv(fkS4, 1)}})
	p2c := ServiceKey{VIP: fkVIP, Port: 8000, Proto: TCP}
	upsert(Service{Key: p2c, Scheduler: SchedulerP2C, Servers: []Server{srv(fkS1, 1), srv(fkS2, 2), srv(fkS3, 3)}})

	// Both report every new flow and close of the script, in one order.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fch, err := f.FlowEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kch, err := h.x.FlowEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fEvents, kEvents := sink(fch), sink(kch)

	byMAC := map[string]netip.Addr{}
	for _, a := range []netip.Addr{fkS1, fkS2, fkS3, fkS4} {
		byMAC[fkServer(a, 0).MAC.String()] = a
	}
	packet := func(k FlowKey, flags uint8) {
		t.Helper()
		fr := frame{
			dstMAC: net.HardwareAddr{2, 0, 0, 0, 1, 0}, srcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
			src: k.Client.Addr(), dst: k.VIP.Addr(), proto: uint8(k.Proto),
			sport: k.Client.Port(), dport: k.VIP.Port(), tcpFlags: flags, payload: []byte("nd"),
		}
		raw := fr.build()
		syn := flags&(tcpSYN|tcpACK) == tcpSYN
		closing := flags&(tcpFIN|tcpRST) != 0
		want, ferr := f.DispatchBytes(k, syn, closing, uint64(len(raw)))
		act, out := h.dispatch(raw)
		switch {
		case ferr != nil && act != xdpDrop && act != xdpPass:
			t.Fatalf("%v flags %#x: fake dropped (%v), kernel %s", k, flags, ferr, actionNames[act])
		case ferr == nil && act != xdpTX:
			t.Fatalf("%v flags %#x: fake sent it to %v, kernel %s", k, flags, want, actionNames[act])
		case ferr == nil && byMAC[net.HardwareAddr(out[:6]).String()] != want:
			t.Fatalf("%v flags %#x: fake sent it to %v, kernel to %v", k, flags, want, byMAC[net.HardwareAddr(out[:6]).String()])
		}
	}

	compare := func(when string) {
		t.Helper()
		for _, w := range [][2]time.Duration{{time.Hour, time.Hour}, {-1, time.Hour}, {time.Hour, -1}} {
			fr, kr := recentKeys(t, f, w[0], w[1]), recentKeys(t, h.x, w[0], w[1])
			if !slices.Equal(fr, kr) {
				t.Errorf("%s: recent flows within %v (closing %v) differ: fake %d, kernel %d", when, w[0], w[1], len(fr), len(kr))
			}
		}
		fst, err := f.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if kst := h.stats(); !reflect.DeepEqual(fst, kst) {
			t.Errorf("%s: stats differ\nfake   %+v\nkernel %+v", when, fst, kst)
		}
		fa, ka := must(f.ActiveFlows())(t), must(h.x.ActiveFlows())(t)
		if !reflect.DeepEqual(fa, ka) {
			t.Errorf("%s: active flows differ\nfake   %v\nkernel %v", when, fa, ka)
		}
		fc, kc := must(f.ActiveCounts())(t), must(h.x.ActiveCounts())(t)
		if !reflect.DeepEqual(fc, kc) {
			t.Errorf("%s: p2c open-flow counts differ\nfake   %v\nkernel %v", when, fc, kc)
		}
		if len(fc[p2c]) == 0 {
			t.Errorf("%s: no p2c counts: the comparison shows nothing", when)
		}
		table := func(x Executor) map[FlowKey]string {
			m := map[FlowKey]string{}
			if err := x.Flows(func(fl Flow) bool {
				m[fl.Key] = fmt.Sprintf("%v closing=%v", fl.Server, fl.Closing)
				return true
			}); err != nil {
				t.Fatal(err)
			}
			return m
		}
		ft, kt := table(f), table(h.x)
		if !maps.Equal(ft, kt) {
			t.Errorf("%s: connection tables differ: fake %d entries, kernel %d", when, len(ft), len(kt))
			for k, v := range ft {
				if kt[k] != v {
					t.Errorf("  %v: fake %q, kernel %q", k, v, kt[k])
				}
			}
		}
		if len(ft) == 0 {
			t.Errorf("%s: empty connection table: the comparison shows nothing", when)
		}
	}

	http := fkManyFlows(fkHTTP, 300)
	for i, k := range http {
		packet(k, tcpSYN)
		packet(k, tcpACK|tcpPSH)
		switch i % 5 {
		case 1:
			packet(k, tcpACK|tcpFIN)
		case 2:
			packet(k, tcpRST)
			packet(k, tcpSYN) // reuses the closed tuple
		case 3:
			packet(k, tcpRST)
			packet(k, tcpACK) // a stray packet after the close
		}
	}
	for _, k := range fkManyFlows(dns, 100) {
		packet(k, 0)
		packet(k, 0)
	}
	// p2c: the counts steer, so every pick depends on all that came
	// before; closes and stray packets move the counts.
	for i, k := range fkManyFlows(p2c, 300) {
		packet(k, tcpSYN)
		packet(k, tcpACK) // established
		switch i % 4 {
		case 1:
			packet(k, tcpACK|tcpFIN)
			packet(k, tcpACK|tcpFIN) // counted once
		case 2:
			packet(k, tcpRST)
			packet(k, tcpSYN)
		case 3:
			packet(fkFlow(p2c, fkClient, uint16(31000+i)), tcpRST) // first seen closing
		}
	}
	for _, k := range fkManyFlows(sticky, 100) {
		packet(k, tcpSYN)
		packet(k, tcpACK) // established
		k.Client = netip.AddrPortFrom(k.Client.Addr(), k.Client.Port()+1000)
		packet(k, tcpSYN) // sticks to the client's server
	}
	both("quiesce sticky", func(x Executor) error { return x.SetWeights(sticky, map[netip.Addr]uint32{fkS3: 0}) })
	// The sticky service turns p2c: counts seeded from the counters.
	upsert(Service{Key: sticky, StickyTime: time.Minute, Scheduler: SchedulerP2C, Servers: []Server{srv(fkS3, 0), srv(fkS4, 1)}})
	for _, k := range fkManyFlows(sticky, 100) {
		k.Client = netip.AddrPortFrom(k.Client.Addr(), k.Client.Port()+2000)
		packet(k, tcpSYN) // not to the quiesced server
	}
	for p := range uint16(20) {
		packet(fkFlow(fkHTTP, fkClient, 30000+p), tcpRST) // first seen closing
	}
	packet(fkFlow(ServiceKey{VIP: fkVIP, Port: 8443, Proto: TCP}, fkClient, 1), tcpSYN)                               // undefined port
	packet(fkFlow(ServiceKey{VIP: netip.MustParseAddr("198.51.100.200"), Port: 80, Proto: TCP}, fkClient, 1), tcpSYN) // not a VIP

	// Quiesce one server, remove another, adopt flows from a "peer".
	both("quiesce", func(x Executor) error { return x.SetWeights(fkHTTP, map[netip.Addr]uint32{fkS4: 0}) })
	upsert(Service{Key: fkHTTP, Servers: []Server{srv(fkS1, 1), srv(fkS3, 3), srv(fkS4, 0)}})
	both("learn flows", func(x Executor) error {
		return x.UpsertFlows([]Flow{
			{Key: fkFlow(fkHTTP, fkClient, 60000), Server: fkS1},
			{Key: fkFlow(fkHTTP, fkClient, 60001), Server: fkS4, Closing: true},
		})
	})
	// More than a batch of the kernel's flow_write_batch (32), some named
	// twice: the later record wins, as in order.
	var many []Flow
	for i := range 100 {
		many = append(many, Flow{Key: fkFlow(fkHTTP, fkClient, uint16(50000+i%70)), Server: []netip.Addr{fkS1, fkS3, fkS4}[i%3], Closing: i%7 == 0})
	}
	both("learn many flows", func(x Executor) error { return x.UpsertFlows(many) })
	for _, k := range http {
		packet(k, tcpACK)
	}
	for _, k := range fkManyFlows(sticky, 100) {
		packet(k, tcpACK)
	}
	// Learnt and deleted flows of the p2c service, then new flows that
	// the changed counts steer.
	both("learn p2c flows", func(x Executor) error {
		return x.UpsertFlows([]Flow{
			{Key: fkFlow(p2c, fkClient, 60000), Server: fkS1},
			{Key: fkFlow(p2c, fkClient, 60001), Server: fkS2, Closing: true},
			{Key: fkManyFlows(p2c, 1)[0], Server: fkS3}, // replaces an open flow
		})
	})
	both("delete a p2c flow", func(x Executor) error { return x.DeleteFlow(fkManyFlows(p2c, 5)[4]) })
	both("reweight p2c", func(x Executor) error { return x.SetWeights(p2c, map[netip.Addr]uint32{fkS1: 4}) })
	for _, k := range fkManyFlows(p2c, 400)[300:] {
		packet(k, tcpSYN)
		packet(k, tcpACK) // established
	}
	compare("after the script")
	fe := fEvents.takeWithin(1<<30, 300*time.Millisecond) // all the Fake reported
	ke := kEvents.take(len(fe))
	t.Logf("flow events: fake %d, kernel %d", len(fe), len(ke))
	if len(fe) < 1000 {
		t.Errorf("only %d flow events: the comparison shows little", len(fe))
	}
	if !reflect.DeepEqual(fe, ke) {
		for i := range min(len(fe), len(ke)) {
			if fe[i] != ke[i] {
				t.Fatalf("flow events differ first at %d: fake %+v, kernel %+v", i, fe[i], ke[i])
			}
		}
		t.Fatalf("flow events differ in number: fake %d, kernel %d", len(fe), len(ke))
	}
	both("reconcile", func(x Executor) error { return x.ReconcileActive() })
	compare("after reconciling")

	// Every server of a service removed but a quiesced one: new flows are
	// dropped, and the table keeps only that server's entries.
	upsert(Service{Key: fkHTTP, Servers: []Server{srv(fkS4, 0)}})
	packet(fkFlow(fkHTTP, fkClient, 61000), tcpSYN)
	packet(fkFlow(fkHTTP, fkClient, 60001), tcpACK) // learnt closing flow of s4
	compare("after removing servers")
}
