package receiver_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/drsync/drsync/testkit"
	"github.com/drsync/drsync/vfs/memfs"
	"github.com/drsync/drsync/vmspec"
)

// TestDefinitionKeptPerEpoch: a blob target (a domain's definition) that
// changes, grows and shrinks between epochs reaches the replica whole with
// each committed epoch, beside disks and RAM, and the replica verifies.
func TestDefinitionKeptPerEpoch(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	rfs := memfs.New()
	src := newSource(rng)
	def := &testkit.MemTarget{Kind: vmspec.KindBlob, Name: vmspec.BlobDomainXML, BlockSize: vmspec.BlobBlockSize}
	src.Targets = append(src.Targets, def)
	s := newSender(t, src, testkit.PipeDialer(newReceiver(t, rfs), alice), memfs.New())
	defer s.Close()
	for e, size := range []int{300, 9000, 120, 120} {
		xml := fmt.Appendf(nil, "<domain type='qemu'><name>web-1</name><description>epoch %d %0*d</description></domain>", e+1, size, 0)
		src.Mutate(func() {
			img, err := vmspec.EncodeBlob(xml)
			if err != nil {
				t.Fatal(err)
			}
			def.Data = img
		})
		want := src.SourceState()
		if _, err := s.RunEpoch(context.Background()); err != nil {
			t.Fatalf("epoch %d: %v", e+1, err)
		}
		checkReplica(t, rfs, want, uint64(e+1))
		_, state, err := testkit.ReplicaState(rfs, "/replicas/web-1")
		if err != nil {
			t.Fatal(err)
		}
		got, err := vmspec.DecodeBlob(state["blob/"+vmspec.BlobDomainXML])
		if err != nil || string(got) != string(xml) {
			t.Fatalf("epoch %d: replica's definition %.60q (%v), want %.60q", e+1, got, err, xml)
		}
		mutate(rng, src, e+1)
	}
}
