package daemon

import (
	"reflect"
	"testing"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
)

// The configuration's data-plane defaults are the executor's.
func TestExecutorConfigDefaults(t *testing.T) {
	d := executor.DefaultConfig()
	d.PinPath = config.DefaultPinPath
	if got := ExecutorConfig(config.Default().DataPlane); !reflect.DeepEqual(got, d) {
		t.Errorf("ExecutorConfig(defaults) = %+v, want %+v", got, d)
	}
}
