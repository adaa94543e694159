// Command verifyrecords checks the test guest's record ring in a raw disk
// image (a replica's disk, say): every record's checksum, and that the
// records form one contiguous run, as they do at any instant the guest
// really was in. The demo runs it on the replica.
package main

import (
	"fmt"
	"os"

	"github.com/drsync/drsync/testkit/guest"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: verifyrecords RAW-IMAGE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	r, err := guest.VerifyRecords(f, st.Size())
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	fmt.Printf("%d records, seq %d..%d, every checksum valid, no gap\n", r.Count, r.First, r.Last)
}
