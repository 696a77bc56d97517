package mac

import (
	"crypto/hmac"
	"crypto/sha256"
	"testing"
)

func TestSum(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	// The agent protocol's request framing (docs/AGENT.md), byte for byte.
	raw := hmac.New(sha256.New, key)
	raw.Write([]byte("nd-agent-request-v1\nGET\n/v1/report\n1700000000\n00112233445566778899aabbccddeeff"))
	got := Sum(key, "nd-agent-request-v1", []byte("GET"), []byte("/v1/report"), []byte("1700000000"), []byte("00112233445566778899aabbccddeeff"))
	if !hmac.Equal(got, raw.Sum(nil)) || len(got) != Size {
		t.Fatalf("Sum differs from the documented framing")
	}
	if !Equal(got, key, "nd-agent-request-v1", []byte("GET"), []byte("/v1/report"), []byte("1700000000"), []byte("00112233445566778899aabbccddeeff")) {
		t.Error("Equal refuses its own MAC")
	}
	// Another label, key, or fields cut elsewhere: another MAC.
	for name, other := range map[string][]byte{
		"label":  Sum(key, "nd-agent-response-v1", []byte("GET"), []byte("/v1/report"), []byte("1700000000"), []byte("00112233445566778899aabbccddeeff")),
		"key":    Sum([]byte("another key, as long as the first"), "nd-agent-request-v1", []byte("GET"), []byte("/v1/report"), []byte("1700000000"), []byte("00112233445566778899aabbccddeeff")),
		"fields": Sum(key, "nd-agent-request-v1", []byte("GET"), []byte("/v1/report"), []byte("1700000000")),
	} {
		if hmac.Equal(other, got) {
			t.Errorf("a different %s gives the same MAC", name)
		}
	}
	// A line feed may stand only in the last field: "a\nb","c" would
	// otherwise read as "a","b\nc".
	if Sum(key, "l", []byte("a\nb"), []byte("c")) != nil || Equal(Sum(key, "l", []byte("a"), []byte("b\nc")), key, "l", []byte("a\nb"), []byte("c")) {
		t.Error("a line feed in a field other than the last was accepted")
	}
	if Sum(key, "l", []byte("a"), []byte("b\nc")) == nil {
		t.Error("a line feed in the last field was refused")
	}
}
