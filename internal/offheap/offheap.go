// Package offheap hands out large, long-lived arrays of pointer-free
// values from anonymous memory mappings outside the Go heap.
//
// Why: the garbage collector lets the heap grow to about twice what is
// live before it collects (GOGC=100), so every byte of a big index that
// lives as long as the process costs about two bytes of RSS. Memory
// mapped here is counted once, is zero when mapped, becomes resident only
// as it is touched, and goes back to the kernel the moment it is freed.
// (pebble's block cache is kept outside the heap for the same reason.)
//
// An Arena records what it mapped, so its owner frees everything with one
// Release, or leaves that to a cleanup (runtime.AddCleanup) tied to the
// owner: memory is never leaked by an owner that is dropped without a
// Close. Values must hold no pointers: the collector does not scan this
// memory, so a pointer kept only here would dangle. Slice checks that.
// Where mmap fails, Slice falls back to the Go heap, as make would.
//
// It knows nothing of what the arrays hold.
package offheap

import (
	"fmt"
	"reflect"
	"syscall"
	"unsafe"
)

// Arena tracks the mappings handed out for one owner. It is not safe for
// concurrent use; a cleanup running Release after its owner became
// unreachable cannot race with the owner.
type Arena struct {
	maps map[*byte][]byte // first byte → whole mapping
	// Bytes is what the arena has mapped and not yet freed.
	Bytes int
}

// Slice returns a zeroed slice of n values of T, mapped outside the heap
// (or from the heap, where mapping fails or n is 0). T must hold no
// pointers.
func Slice[T any](a *Arena, n int) []T {
	var zero T
	size := int(unsafe.Sizeof(zero))
	if hasPointers(reflect.TypeFor[T]()) {
		panic(fmt.Sprintf("offheap: %v holds pointers", reflect.TypeFor[T]()))
	}
	if n <= 0 || size == 0 {
		return make([]T, n)
	}
	if n > (1<<62)/size {
		panic(fmt.Sprintf("offheap: %d values of %d bytes", n, size))
	}
	m, err := syscall.Mmap(-1, 0, n*size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return make([]T, n)
	}
	if a.maps == nil {
		a.maps = make(map[*byte][]byte)
	}
	a.maps[&m[0]] = m
	a.Bytes += len(m)
	return unsafe.Slice((*T)(unsafe.Pointer(&m[0])), n)
}

// Free unmaps s, which Slice returned from this arena; s must not be used
// again. A slice from the heap fallback, or nil, is left to the collector.
func Free[T any](a *Arena, s []T) {
	if cap(s) == 0 {
		return
	}
	p := (*byte)(unsafe.Pointer(unsafe.SliceData(s)))
	m, ok := a.maps[p]
	if !ok {
		return
	}
	delete(a.maps, p)
	a.Bytes -= len(m)
	if err := syscall.Munmap(m); err != nil {
		// Only an address that is not a mapping fails, which the map rules out.
		panic(fmt.Sprintf("offheap: munmap: %v", err))
	}
}

// Release unmaps everything the arena handed out.
func (a *Arena) Release() {
	for p, m := range a.maps {
		delete(a.maps, p)
		a.Bytes -= len(m)
		if err := syscall.Munmap(m); err != nil {
			panic(fmt.Sprintf("offheap: munmap: %v", err))
		}
	}
}

func hasPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	case reflect.Array:
		return t.Len() > 0 && hasPointers(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if hasPointers(t.Field(i).Type) {
				return true
			}
		}
		return false
	}
	return true
}
