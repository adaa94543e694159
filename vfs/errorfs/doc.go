// Package errorfs wraps a vfs.FS to inject failures into chosen operations.
//
// Wrap consults an Injector before every FS and File method; when it
// returns an error the operation is not performed and fails with that
// error. Locks taken through Wrap are the wrapped FS's own (only taking
// one, OpLock, can be failed), so layers over one FS exclude each other. Injectors compose: When restricts one to the operations a Filter
// (Ops, PathMatch, Mutations) selects, Any combines several.
//
// The standard crash-injection loop first counts the operations a
// deterministic scenario performs, then reruns it once per operation,
// failing that one and checking what survives a crash of the underlying
// memfs:
//
//	var c errorfs.Counter
//	run(errorfs.Wrap(memfs.NewStrict(), errorfs.When(errorfs.Mutations(), &c)))
//	for i := range c.Count() {
//		mem := memfs.NewStrict()
//		run(errorfs.Wrap(mem, errorfs.When(errorfs.Mutations(), errorfs.OnIndex(i, nil))))
//		check(mem.Crash())
//	}
package errorfs
