package executor

// NewSteeringTC is NewSteering with the clsact fallback instead of tcx, for
// the tests of package executor_test.
func NewSteeringTC(o SteeringOptions) (*Steering, error) { return newSteering(o, true) }
