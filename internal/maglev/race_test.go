//go:build race

package maglev

const raceEnabled = true
