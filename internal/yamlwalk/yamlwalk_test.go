package yamlwalk

import (
	"testing"
	"time"
)

// TestKinds checks that each sort of problem is told apart, so that a caller
// can word it its own way, and that an unknown key is named.
func TestKinds(t *testing.T) {
	w := New()
	root, ok := w.Document([]byte("a: 5\nb: {x: 1}\nzzzz: 1\nc: [1]\nc: 2\n"), "two documents")
	if !ok || root == nil {
		t.Fatalf("Document: %v", w.Problems)
	}
	f, done, _ := w.Fields("", root, "a", "b", "c")
	defer done()
	var b int
	w.DurField(f, "", "a", new(time.Duration))
	Integer(w, f, "", "b", 0, 10, &b)
	want := []Problem{
		{Line: 3, Column: 1, Path: "zzzz", Key: "zzzz", Msg: "unknown field (known: a, b, c)", Kind: UnknownField},
		{Line: 5, Column: 1, Path: "c", Msg: "field given twice (first at line 4)", Kind: Invalid},
		{Line: 1, Column: 4, Path: "a", Msg: `5 has no unit: write a duration such as "5s"`, Kind: NoUnit},
		{Line: 2, Column: 4, Path: "b", Msg: `want an integer, got a mapping`, Kind: WrongType},
	}
	if len(w.Problems) != len(want) {
		t.Fatalf("problems %+v, want %+v", w.Problems, want)
	}
	for i := range want {
		if w.Problems[i] != want[i] {
			t.Errorf("problem %d: %+v, want %+v", i, w.Problems[i], want[i])
		}
	}
	if _, ok := New().Document([]byte("a: 1\n---\na: 2\n"), "two documents"); ok {
		t.Error("two documents read as one")
	}
}
