package takeover

import (
	"fmt"
	"os"
	"sync"

	"github.com/drsync/drsync/blockhash"
	"github.com/drsync/drsync/replica"
)

// ramCopyReaders is how many readers copyRAM runs: a store in the
// network (Ceph) answers several reads at once far faster than one after
// the other.
const ramCopyReaders = 8

// ramCopyChunk is what one read takes: an RBD object.
const ramCopyChunk = 4 << 20

// copyRAM copies a RAM image that is not a local file (a store that
// clones) into the file path, which QEMU then maps as guest memory like a
// file replica's image. Zero chunks are skipped, so the file is as sparse
// as the guest's memory is empty. Each reader opens the image itself:
// one handle serializes its reads.
func copyRAM(path string, open func() (replica.ReaderAtCloser, error), size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	next := make(chan int64)
	errs := make(chan error, ramCopyReaders)
	var wg sync.WaitGroup
	for range ramCopyReaders {
		src, err := open()
		if err != nil {
			close(next)
			wg.Wait()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer src.Close()
			buf := make([]byte, ramCopyChunk)
			for off := range next {
				n := min(int64(len(buf)), size-off)
				if _, err := src.ReadAt(buf[:n], off); err != nil {
					errs <- fmt.Errorf("read at %d: %w", off, err)
					for range next {
					}
					return
				}
				if blockhash.IsZero(buf[:n]) {
					continue
				}
				if _, err := f.WriteAt(buf[:n], off); err != nil {
					errs <- err
					for range next {
					}
					return
				}
			}
		}()
	}
	for off := int64(0); off < size; off += ramCopyChunk {
		next <- off
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return f.Close()
}
