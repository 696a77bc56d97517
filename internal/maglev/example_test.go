package maglev_test

import (
	"fmt"

	"github.com/nd-dispatcher/nd/internal/maglev"
)

func ExampleBuild() {
	table, err := maglev.Build(maglev.DefaultSize, []maglev.Backend{
		{Key: "198.51.100.11", ID: 1, Weight: 1},
		{Key: "198.51.100.12", ID: 2, Weight: 2},
		{Key: "198.51.100.13", ID: 3, Weight: 1},
		{Key: "198.51.100.14", ID: 4, Weight: 0}, // drained: no new flows
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	slots := make(map[uint32]int)
	for _, id := range table {
		slots[id]++
	}
	// 65537·2/4 = 32768.5 has the largest remainder, so backend 2 takes the odd slot.
	fmt.Println(slots[1], slots[2], slots[3], slots[4])
	// Output: 16384 32769 16384 0
}
