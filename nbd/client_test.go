package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func randomData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestReadAt(t *testing.T) {
	data := randomData(1<<20, 1)
	clear(data[64<<10 : 192<<10]) // a hole for OFFSET_HOLE chunks
	tests := []struct {
		name string
		srv  *fakeServer
	}{
		{"one chunk", &fakeServer{}},
		{"small chunks with holes", &fakeServer{chunkSize: 4096}},
		{"chunks out of order", &fakeServer{chunkSize: 4096, reverse: true}},
		{"simple replies", &fakeServer{noStructured: true}},
		{"legacy export name", &fakeServer{noGo: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.srv
			srv.data = data
			c := mustConnectFake(t, srv, Options{})
			if got := c.Size(); got != int64(len(data)) {
				t.Fatalf("Size = %d, want %d", got, len(data))
			}
			if c.StructuredReplies() == srv.noStructured {
				t.Errorf("StructuredReplies = %v with noStructured %v", c.StructuredReplies(), srv.noStructured)
			}
			for _, r := range []struct{ off, n int }{{0, 1}, {0, 4096}, {1, 100000}, {60 << 10, 200 << 10}, {1<<20 - 10, 10}, {0, 1 << 20}} {
				p := bytes.Repeat([]byte{0xee}, r.n)
				n, err := c.ReadAt(p, int64(r.off))
				if err != nil || n != r.n {
					t.Fatalf("ReadAt(%d, %d) = %d, %v", r.off, r.n, n, err)
				}
				if !bytes.Equal(p, data[r.off:r.off+r.n]) {
					t.Fatalf("ReadAt(%d, %d): content differs", r.off, r.n)
				}
			}
		})
	}
}

func TestReadAtEOF(t *testing.T) {
	data := randomData(10000, 2)
	c := mustConnectFake(t, &fakeServer{data: data}, Options{})
	p := make([]byte, 100)
	n, err := c.ReadAt(p, 9950)
	if n != 50 || err != io.EOF || !bytes.Equal(p[:50], data[9950:]) {
		t.Errorf("ReadAt across end = %d, %v; want 50, io.EOF and the tail", n, err)
	}
	if n, err := c.ReadAt(p, 10000); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at end = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := c.ReadAt(nil, 5); n != 0 || err != nil {
		t.Errorf("empty ReadAt = %d, %v", n, err)
	}
	if _, err := c.ReadAt(p, -1); err == nil {
		t.Error("ReadAt at negative offset succeeded")
	}
}

func TestReadSplitsAndAligns(t *testing.T) {
	data := randomData(256<<10, 3)
	srv := &fakeServer{data: data, block: [3]uint32{512, 4096, 16384}}
	srv.onRequest = func(r fakeRequest) ([]byte, bool) {
		if r.off%512 != 0 || r.length%512 != 0 || r.length > 16384 {
			return chunkBytes(replyFlagDone, chunkError, r.cookie, errPayload(22, "misaligned or too big")), true
		}
		return nil, false
	}
	c := mustConnectFake(t, srv, Options{})
	if mn, pref, mx := c.BlockSizes(); mn != 512 || pref != 4096 || mx != 16384 {
		t.Fatalf("BlockSizes = %d, %d, %d", mn, pref, mx)
	}
	for _, r := range []struct{ off, n int }{{1, 1}, {511, 2}, {1000, 50000}, {0, 100000}, {256<<10 - 3, 3}} {
		p := make([]byte, r.n)
		if n, err := c.ReadAt(p, int64(r.off)); err != nil || n != r.n {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", r.off, r.n, n, err)
		}
		if !bytes.Equal(p, data[r.off:r.off+r.n]) {
			t.Fatalf("ReadAt(%d, %d): content differs", r.off, r.n)
		}
	}
	reads := 0
	for _, r := range srv.recorded() {
		if r.typ == cmdRead {
			reads++
		}
	}
	// 100000 bytes at 0 alone needs ceil(100352/16384) = 7 requests.
	if reads < 7 {
		t.Errorf("%d read requests, want the big reads split", reads)
	}
}

func TestConcurrentReads(t *testing.T) {
	data := randomData(512<<10, 4)
	c := mustConnectFake(t, &fakeServer{data: data, chunkSize: 8192}, Options{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 20 {
				off := r.IntN(len(data))
				n := r.IntN(len(data) - off)
				p := make([]byte, n)
				if _, err := c.ReadAt(p, int64(off)); err != nil {
					t.Errorf("ReadAt(%d, %d): %v", off, n, err)
					return
				}
				if !bytes.Equal(p, data[off:off+n]) {
					t.Errorf("ReadAt(%d, %d): content differs", off, n)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestBlockStatus(t *testing.T) {
	const size = 1 << 20
	// base:allocation: 4 KiB granules, alternating data and hole+zero;
	// the dirty bitmap: [64K, 128K) dirty. The server only ever describes
	// up to three granules, so the client must keep asking.
	srv := &fakeServer{
		data:     make([]byte, size),
		contexts: []string{ContextBaseAllocation, DirtyBitmapContext("b0"), "x-other:ctx"},
	}
	srv.status = func(name string, off, length uint64) []desc {
		var out []desc
		for pos, end := off, off+length; pos < end && len(out) < 3; {
			g := pos / 4096
			e := min((g+1)*4096, end)
			var fl uint32
			switch name {
			case ContextBaseAllocation:
				if g%2 == 1 {
					fl = StateHole | StateZero
				}
			default:
				if pos >= 64<<10 && pos < 128<<10 {
					fl = StateDirty
				}
			}
			out = append(out, desc{uint32(e - pos), fl})
			pos = e
		}
		return out
	}
	c := mustConnectFake(t, srv, Options{MetaContexts: []string{ContextBaseAllocation, DirtyBitmapContext("b0")}})
	if got := c.MetaContexts(); len(got) != 2 {
		t.Fatalf("MetaContexts = %q", got)
	}
	ctx := context.Background()

	ext, err := c.BlockStatus(ctx, ContextBaseAllocation, 1000, 20000)
	if err != nil {
		t.Fatal(err)
	}
	checkCovers(t, ext, 1000, 20000)
	want := []Extent{{1000, 3096, 0}, {4096, 4096, 3}, {8192, 4096, 0}, {12288, 4096, 3}, {16384, 4096, 0}, {20480, 520, 3}}
	if !equalExtents(ext, want) {
		t.Errorf("base:allocation = %v, want %v", ext, want)
	}

	ext, err = c.BlockStatus(ctx, DirtyBitmapContext("b0"), 0, size)
	if err != nil {
		t.Fatal(err)
	}
	want = []Extent{{0, 64 << 10, 0}, {64 << 10, 64 << 10, StateDirty}, {128 << 10, size - 128<<10, 0}}
	if !equalExtents(ext, want) {
		t.Errorf("dirty bitmap = %v, want %v", ext, want)
	}

	if ext, err := c.BlockStatus(ctx, ContextBaseAllocation, size, 0); err != nil || len(ext) != 0 {
		t.Errorf("empty range = %v, %v", ext, err)
	}
	if _, err := c.BlockStatus(ctx, "x-other:ctx", 0, 10); !errors.Is(err, ErrMetaContextUnavailable) {
		t.Errorf("unselected context: %v, want ErrMetaContextUnavailable", err)
	}
	if _, err := c.BlockStatus(ctx, ContextBaseAllocation, size-10, 11); err == nil {
		t.Error("range past the end accepted")
	}
}

func TestBlockStatusMinimumBlock(t *testing.T) {
	srv := &fakeServer{data: make([]byte, 1<<16), contexts: []string{ContextBaseAllocation}, block: [3]uint32{4096, 4096, 1 << 16}}
	srv.status = func(_ string, off, length uint64) []desc {
		if off%4096 != 0 || length%4096 != 0 {
			panic("misaligned block status request")
		}
		return []desc{{4096, uint32(off / 4096 % 2)}}
	}
	c := mustConnectFake(t, srv, Options{MetaContexts: []string{ContextBaseAllocation}})
	ext, err := c.BlockStatus(context.Background(), ContextBaseAllocation, 5000, 10000)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{5000, 3192, 1}, {8192, 4096, 0}, {12288, 2712, 1}}
	if !equalExtents(ext, want) {
		t.Errorf("got %v, want %v", ext, want)
	}
}

func checkCovers(t *testing.T, ext []Extent, off, n int64) {
	t.Helper()
	pos := off
	for _, e := range ext {
		if e.Off != pos || e.Len <= 0 {
			t.Fatalf("extents %v do not tile [%d, +%d) at %d", ext, off, n, pos)
		}
		pos += e.Len
	}
	if pos != off+n {
		t.Fatalf("extents %v end at %d, want %d", ext, pos, off+n)
	}
}

func equalExtents(a, b []Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestListMetaContexts(t *testing.T) {
	srv := &fakeServer{data: make([]byte, 512), contexts: []string{ContextBaseAllocation, DirtyBitmapContext("a")}}
	c := mustConnectFake(t, srv, Options{ListMetaContexts: true})
	got := c.AvailableMetaContexts()
	if len(got) != 2 || got[0] != ContextBaseAllocation || got[1] != DirtyBitmapContext("a") {
		t.Errorf("AvailableMetaContexts = %q", got)
	}
}

// TestMalformedReadReplies feeds broken replies to NBD_CMD_READ of 4096
// bytes at 8192 (cookie 1) and expects clean protocol errors naming the
// offending field, after which the client refuses further requests.
func TestMalformedReadReplies(t *testing.T) {
	const off = 8192
	full := dataPayload(off, make([]byte, 4096))
	tests := []struct {
		name  string
		reply func(cookie uint64) []byte
		want  string // substring of the error
	}{
		{"bad magic", func(c uint64) []byte { return []byte{1, 2, 3, 4, 5, 6, 7, 8} }, "reply magic"},
		{"wrong cookie", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkOffsetData, c+7, full) }, "cookie"},
		{"extended header", func(c uint64) []byte { return []byte{0x6e, 0x8a, 0x27, 0x8c} }, "extended-header"},
		{"simple reply after structured", func(c uint64) []byte { return simpleBytes(0, c, make([]byte, 4096)) }, "simple reply to NBD_CMD_READ"},
		{"data chunk too short", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkOffsetData, c, dataPayload(off, nil)) }, "OFFSET_DATA length 8"},
		{"data before request", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkOffsetData, c, dataPayload(off-1, make([]byte, 10)))
		}, "outside request"},
		{"data past request", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkOffsetData, c, dataPayload(off+4000, make([]byte, 100)))
		}, "outside request"},
		{"huge data length", func(c uint64) []byte {
			h := chunkBytes(replyFlagDone, chunkOffsetData, c, nil)
			copy(h[16:], []byte{0xff, 0xff, 0xff, 0xff})
			return append(h, dataPayload(off, nil)...)
		}, "outside request"},
		{"overlapping data", func(c uint64) []byte {
			return cat(chunkBytes(0, chunkOffsetData, c, dataPayload(off, make([]byte, 2048))),
				chunkBytes(replyFlagDone, chunkOffsetData, c, dataPayload(off+2047, make([]byte, 2049))))
		}, "overlaps"},
		{"hole over data", func(c uint64) []byte {
			return cat(chunkBytes(0, chunkOffsetData, c, full), chunkBytes(replyFlagDone, chunkOffsetHole, c, holePayload(off+10, 1)))
		}, "overlaps"},
		{"incomplete", func(c uint64) []byte {
			return cat(chunkBytes(0, chunkOffsetData, c, dataPayload(off, make([]byte, 100))), chunkBytes(replyFlagDone, chunkNone, c, nil))
		}, "covers 100 of 4096"},
		{"gap", func(c uint64) []byte {
			return cat(chunkBytes(0, chunkOffsetHole, c, holePayload(off, 100)), chunkBytes(replyFlagDone, chunkOffsetHole, c, holePayload(off+101, 3995)))
		}, "covers 4095 of 4096"},
		{"hole size zero", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkOffsetHole, c, holePayload(off, 0)) }, "hole size is 0"},
		{"hole chunk length", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkOffsetHole, c, holePayload(off, 4096)[:11])
		}, "OFFSET_HOLE length 11"},
		{"none without done", func(c uint64) []byte { return chunkBytes(0, chunkNone, c, nil) }, "without NBD_REPLY_FLAG_DONE"},
		{"none with payload", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkNone, c, []byte{0}) }, "NONE length 1"},
		{"block status in read", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(1, 4096, 0))
		}, "unexpected NBD_REPLY_TYPE_BLOCK_STATUS"},
		{"unknown chunk type", func(c uint64) []byte { return chunkBytes(replyFlagDone, 77, c, nil) }, "unexpected NBD_REPLY_TYPE_77"},
		{"error message too long", func(c uint64) []byte {
			p := errPayload(5, "boom")
			p[5] = 200
			return chunkBytes(replyFlagDone, chunkError, c, p)
		}, "message length 200"},
		{"error chunk too short", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkError, c, []byte{0, 0, 0, 5, 0}) }, "ERROR length 5"},
		{"error value zero", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkError, c, errPayload(0, "")) }, "error value is 0"},
		{"error offset outside", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkErrorOffset, c, errPayload(5, "bad", off+4096))
		}, "outside request"},
		{"error offset trailing bytes", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkErrorOffset, c, append(errPayload(5, "bad", off), 0))
		}, "ERROR_OFFSET length 18"},
		{"endless error chunks", func(c uint64) []byte {
			var b []byte
			for range maxErrorChunks + 1 {
				b = append(b, chunkBytes(0, chunkError, c, errPayload(5, "again"))...)
			}
			return b
		}, "more than 64 error chunks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{data: make([]byte, 1<<16)}
			srv.onRequest = func(r fakeRequest) ([]byte, bool) {
				if r.typ != cmdRead {
					return nil, false
				}
				return tt.reply(r.cookie), true
			}
			c := mustConnectFake(t, srv, Options{})
			_, err := c.ReadAt(make([]byte, 4096), off)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to mention %q", err, tt.want)
			}
			if _, err2 := c.ReadAt(make([]byte, 1), 0); !errors.Is(err2, ErrProtocol) || !strings.Contains(err2.Error(), "unusable") {
				t.Errorf("request after protocol error: %v", err2)
			}
		})
	}
}

func TestMalformedBlockStatusReplies(t *testing.T) {
	tests := []struct {
		name  string
		reply func(cookie uint64) []byte
		want  string
	}{
		{"too short", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(100, 4096)) }, "BLOCK_STATUS length 8"},
		{"ragged", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkBlockStatus, c, append(statusPayload(100, 4096, 0), 1))
		}, "BLOCK_STATUS length 13"},
		{"unknown context", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(7, 4096, 0))
		}, "context id 7"},
		{"context twice", func(c uint64) []byte {
			return cat(chunkBytes(0, chunkBlockStatus, c, statusPayload(100, 4096, 0)), chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(100, 4096, 0)))
		}, "second NBD_REPLY_TYPE_BLOCK_STATUS"},
		{"zero length descriptor", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(100, 4096, 0, 0, 0))
		}, "descriptor 1 has length 0"},
		{"descriptor past end", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(100, 1<<16, 0, 512, 0))
		}, "descriptor 1 starts at"},
		{"wanted context missing", func(c uint64) []byte {
			return chunkBytes(replyFlagDone, chunkBlockStatus, c, statusPayload(101, 1<<16, 0))
		}, "lacks context \"base:allocation\""},
		{"data chunk", func(c uint64) []byte { return chunkBytes(replyFlagDone, chunkOffsetData, c, dataPayload(0, []byte{1})) }, "unexpected NBD_REPLY_TYPE_OFFSET_DATA"},
		{"simple success", func(c uint64) []byte { return simpleBytes(0, c, nil) }, "simple reply without error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{data: make([]byte, 1<<16), contexts: []string{ContextBaseAllocation, DirtyBitmapContext("d")}}
			srv.onRequest = func(r fakeRequest) ([]byte, bool) { return tt.reply(r.cookie), true }
			c := mustConnectFake(t, srv, Options{MetaContexts: []string{ContextBaseAllocation, DirtyBitmapContext("d")}})
			_, err := c.BlockStatus(context.Background(), ContextBaseAllocation, 0, 1<<16)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestServerErrors(t *testing.T) {
	data := randomData(1<<16, 5)
	fail := true
	srv := &fakeServer{data: data}
	srv.onRequest = func(r fakeRequest) ([]byte, bool) {
		if !fail {
			return nil, false
		}
		// Partial data, an error with an offset, then the final chunk.
		return cat(chunkBytes(0, chunkOffsetData, r.cookie, dataPayload(r.off, data[r.off:r.off+10])),
			chunkBytes(0, chunkErrorOffset, r.cookie, errPayload(5, "disk on fire\n", r.off+10)),
			chunkBytes(0, 0x8000|42, r.cookie, errPayload(28, "unknown error kind")),
			chunkBytes(replyFlagDone, chunkNone, r.cookie, nil)), true
	}
	c := mustConnectFake(t, srv, Options{})
	_, err := c.ReadAt(make([]byte, 100), 1000)
	var se *ServerError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want *ServerError", err)
	}
	if se.Errno != 5 || se.Offset != 1010 || se.Message != "disk on fire " || !errors.Is(err, syscall.EIO) {
		t.Errorf("ServerError = %+v (%v)", se, err)
	}
	// The stream stayed in step: the next read works.
	fail = false
	p := make([]byte, 100)
	if _, err := c.ReadAt(p, 1000); err != nil || !bytes.Equal(p, data[1000:1100]) {
		t.Errorf("read after server error: %v", err)
	}
}

func TestSimpleReplyError(t *testing.T) {
	srv := &fakeServer{data: make([]byte, 4096), noStructured: true}
	srv.onRequest = func(r fakeRequest) ([]byte, bool) { return simpleBytes(1, r.cookie, nil), true }
	c := mustConnectFake(t, srv, Options{})
	_, err := c.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, syscall.EPERM) {
		t.Errorf("err = %v, want EPERM", err)
	}
}

func TestHandshakeErrors(t *testing.T) {
	goOK := func(size uint64) []byte {
		return cat(optReplyBytes(optGo, repInfo, infoExportBytes(size, FlagHasFlags)), optReplyBytes(optGo, repAck, nil))
	}
	tests := []struct {
		name string
		srv  *fakeServer
		opts Options
		is   error
		want string
	}{
		{name: "unknown export", srv: &fakeServer{export: "disk0"}, opts: Options{Export: "disk1"}, is: ErrUnknownExport, want: "no export named disk1"},
		{name: "context not selected", srv: &fakeServer{contexts: []string{ContextBaseAllocation}}, opts: Options{MetaContexts: []string{DirtyBitmapContext("nope")}}, is: ErrMetaContextUnavailable, want: "qemu:dirty-bitmap:nope"},
		{name: "contexts without structured replies", srv: &fakeServer{noStructured: true}, opts: Options{MetaContexts: []string{ContextBaseAllocation}}, is: ErrUnsupported, want: "structured"},
		{name: "ack without export info", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return optReplyBytes(o, repAck, nil), o == optGo
		}}, is: ErrProtocol, want: "without NBD_INFO_EXPORT"},
		{name: "export info length", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return optReplyBytes(o, repInfo, infoExportBytes(1, 1)[:11]), o == optGo
		}}, is: ErrProtocol, want: "NBD_INFO_EXPORT length 11"},
		{name: "export without has-flags", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return optReplyBytes(o, repInfo, infoExportBytes(1, 0)), o == optGo
		}}, is: ErrProtocol, want: "NBD_FLAG_HAS_FLAGS"},
		{name: "size overflow", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return goOK(1 << 63), o == optGo
		}}, is: ErrProtocol, want: "size 9223372036854775808"},
		{name: "bad block sizes", srv: &fakeServer{block: [3]uint32{3, 4096, 1 << 20}}, is: ErrProtocol, want: "minimum 3"},
		{name: "reply to another option", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return optReplyBytes(optList, repAck, nil), o == optStructuredReply
		}}, is: ErrProtocol, want: "reply is for NBD_OPT_LIST"},
		{name: "oversized option reply", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			b := optReplyBytes(o, repInfo, nil)
			copy(b[16:], []byte{0x7f, 0xff, 0xff, 0xff})
			return b, o == optGo
		}}, is: ErrProtocol, want: "exceeds 65536"},
		{name: "duplicate context id", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return cat(optReplyBytes(o, repMetaContext, metaContextBytes(1, "base:allocation")),
				optReplyBytes(o, repMetaContext, metaContextBytes(1, "x:y"))), o == optSetMetaContext
		}}, opts: Options{MetaContexts: []string{ContextBaseAllocation}}, is: ErrProtocol, want: "id 1 given to both"},
		{name: "unexpected reply type", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return optReplyBytes(o, repServer, []byte("x")), o == optGo
		}}, is: ErrProtocol, want: "unexpected NBD_REP_SERVER reply to NBD_OPT_GO"},
		{name: "policy error", srv: &fakeServer{onOption: func(o uint32, _ []byte) ([]byte, bool) {
			return optReplyBytes(o, repErrPolicy, []byte("go away")), o == optGo
		}}, want: "NBD_OPT_GO: server replied NBD_REP_ERR_POLICY: go away"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.srv
			srv.data = make([]byte, 4096)
			_, err := connectFake(t, srv, tt.opts)
			if err == nil {
				t.Fatal("handshake succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestGreetingErrors(t *testing.T) {
	be := func(v uint64) []byte { return binary64(v) }
	tests := []struct {
		name     string
		greeting []byte
		is       error
	}{
		{"not nbd", []byte("HTTP/1.1 200 OK\r\n\r\n"), ErrProtocol},
		{"oldstyle", cat(be(magicInit), be(magicOldstyle), []byte{0, 0}), ErrUnsupported},
		{"not fixed newstyle", cat(be(magicInit), be(magicOpt), []byte{0, 0}), ErrUnsupported},
		{"truncated", be(magicInit), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cli, srv := netPipe(t)
			go func() {
				srv.Write(tt.greeting)
				srv.Close()
			}()
			_, err := NewClient(context.Background(), cli, Options{})
			if !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
		})
	}
}

func TestContextCancel(t *testing.T) {
	srv := &fakeServer{data: make([]byte, 4096)}
	srv.onRequest = func(fakeRequest) ([]byte, bool) { return nil, true } // never answers
	c := mustConnectFake(t, srv, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.ReadAtContext(ctx, make([]byte, 10), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancellation took %v", d)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := c.ReadAtContext(ctx2, make([]byte, 10), 0); err == nil {
		t.Error("read after interrupted request succeeded")
	}
}

func TestHandshakeContext(t *testing.T) {
	cli, _ := netPipe(t) // the server never speaks
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := NewClient(ctx, cli, Options{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
}

func TestClose(t *testing.T) {
	srv := &fakeServer{data: make([]byte, 4096)}
	c, err := connectFake(t, srv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt after Close: %v", err)
	}
	select {
	case <-srv.done:
	case <-time.After(5 * time.Second):
		t.Fatal("server did not finish after NBD_CMD_DISC")
	}
	reqs := srv.recorded()
	if len(reqs) != 2 || reqs[1].typ != cmdDisc {
		t.Errorf("requests = %+v, want a read then NBD_CMD_DISC", reqs)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		ok   bool
	}{
		{"zero", Options{}, true},
		{"contexts", Options{Export: "disk", MetaContexts: []string{ContextBaseAllocation, DirtyBitmapContext("b")}}, true},
		{"long export", Options{Export: strings.Repeat("x", 4097)}, false},
		{"nul in export", Options{Export: "a\x00b"}, false},
		{"bad utf8", Options{Export: "\xff"}, false},
		{"empty context", Options{MetaContexts: []string{""}}, false},
		{"no namespace", Options{MetaContexts: []string{"allocation"}}, false},
		{"leading colon", Options{MetaContexts: []string{":x"}}, false},
		{"duplicate", Options{MetaContexts: []string{"a:b", "a:b"}}, false},
		{"too many", Options{MetaContexts: manyContexts(65)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.opts.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func manyContexts(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "x-t:" + strings.Repeat("a", i+1)
	}
	return out
}

func TestCoverage(t *testing.T) {
	var c coverage
	for _, s := range [][2]uint64{{10, 20}, {30, 40}, {20, 30}, {0, 5}, {5, 10}} {
		if err := c.add(s[0], s[1]); err != nil {
			t.Fatalf("add(%d, %d): %v", s[0], s[1], err)
		}
	}
	if c.total != 40 || len(c.spans) != 1 {
		t.Fatalf("coverage = %+v, want one span of 40", c)
	}
	for _, s := range [][2]uint64{{0, 1}, {39, 41}, {5, 6}} {
		if err := c.add(s[0], s[1]); !errors.Is(err, ErrProtocol) {
			t.Errorf("add(%d, %d) = %v, want overlap", s[0], s[1], err)
		}
	}
	var d coverage
	for i := range uint64(maxSpans) {
		if err := d.add(2*i, 2*i+1); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.add(1<<40, 1<<40+1); !errors.Is(err, ErrProtocol) {
		t.Errorf("span %d accepted", maxSpans+1)
	}
}

func TestSanitizeMessage(t *testing.T) {
	got := sanitizeMessage([]byte("a\nb\x1b[31m\xffc"))
	if got != "a b [31m\uFFFDc" {
		t.Errorf("sanitizeMessage = %q", got)
	}
	if n := len(sanitizeMessage(bytes.Repeat([]byte("x"), 10000))); n != maxString {
		t.Errorf("long message kept %d bytes", n)
	}
}
