package dist

import (
	"testing"

	"github.com/drsync/drsync/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
