// Package mac is nd's one way of authenticating a message with a shared key,
// for the agent protocol and the high-availability wire alike: HMAC-SHA256
// over a label that names the kind of message (and its version), then each
// field preceded by a line feed. The label keeps one kind of message from
// standing for another; only the last field may hold a line feed, so that no
// field can shift into its neighbour.
package mac

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
)

// Size is the length of a MAC in bytes.
const Size = sha256.Size

// Sum is the MAC of a message of kind label made of fields. A message whose
// fields other than the last hold a line feed has no MAC: Sum returns nil,
// which Equal never accepts.
func Sum(key []byte, label string, fields ...[]byte) []byte {
	for _, f := range fields[:max(len(fields)-1, 0)] {
		if bytes.IndexByte(f, '\n') >= 0 {
			return nil
		}
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	for _, f := range fields {
		m.Write([]byte{'\n'})
		m.Write(f)
	}
	return m.Sum(nil)
}

// Equal reports, in constant time, whether got is the MAC of the message.
func Equal(got, key []byte, label string, fields ...[]byte) bool {
	want := Sum(key, label, fields...)
	return want != nil && hmac.Equal(got, want)
}
