package ha

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// TestReadFrameGrowsAsBytesArrive: a header announcing the largest frame,
// followed by a few bytes, makes the reader allocate about what arrived,
// not the frame; a whole frame is read whole.
func TestReadFrameGrowsAsBytesArrive(t *testing.T) {
	hdr := make([]byte, headerLen)
	copy(hdr, wireMagic)
	binary.BigEndian.PutUint32(hdr[48:], maxFrame-overhead)
	size, err := frameLen(hdr)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(make([]byte, 100)))
	frame, err := readFrame(br, append([]byte(nil), hdr...), size)
	if err != io.ErrUnexpectedEOF {
		t.Errorf("a frame cut short: %v, want %v", err, io.ErrUnexpectedEOF)
	}
	if c := cap(frame); c > 2*frameChunk {
		t.Errorf("a header and 100 bytes made a buffer of %d bytes for a frame of %d", c, size)
	}

	body := bytes.Repeat([]byte{7}, 3*frameChunk+5)
	frame, err = readFrame(bufio.NewReader(bytes.NewReader(body)), []byte("head"), 4+len(body))
	if err != nil || !bytes.Equal(frame[4:], body) || string(frame[:4]) != "head" {
		t.Errorf("whole frame: %d bytes, err %v", len(frame), err)
	}
}
