package epochctl

import "fmt"

// Level is a compression level, ordered by CPU cost: each level spends more
// CPU per byte than the one before it, hoping to put fewer bytes on the
// wire. The values and names are those of the sender's compression levels,
// so a caller converts with a plain type conversion in either direction;
// this package does not import the protocol package to say so (a test
// does, to keep the two lists in step).
type Level uint8

const (
	LevelNone    Level = iota // no compression: no CPU, wire ≈ raw
	LevelFast                 // zstd fastest
	LevelDefault              // zstd default
	LevelBetter               // zstd better compression
	NumLevels    = 4          // how many levels there are
)

var levelNames = [NumLevels]string{"none", "fast", "default", "better"}

// AllLevels lists every level, cheapest first.
func AllLevels() []Level { return []Level{LevelNone, LevelFast, LevelDefault, LevelBetter} }

func (l Level) String() string {
	if l < NumLevels {
		return levelNames[l]
	}
	return fmt.Sprintf("Level(%d)", uint8(l))
}

// Valid reports whether l is one of the defined levels.
func (l Level) Valid() bool { return l < NumLevels }

// MarshalText returns the level's name.
func (l Level) MarshalText() ([]byte, error) {
	if !l.Valid() {
		return nil, fmt.Errorf("epochctl: unknown level %d", uint8(l))
	}
	return []byte(l.String()), nil
}

// UnmarshalText parses a level's name: none, fast, default or better.
func (l *Level) UnmarshalText(b []byte) error {
	for i, name := range levelNames {
		if string(b) == name {
			*l = Level(i)
			return nil
		}
	}
	return fmt.Errorf("epochctl: unknown level %q (want none, fast, default or better)", b)
}
