// Package stripe carries one ordered, reliable byte stream over several
// connections at once. Each connection has its own congestion controller,
// so on a long, lossy link, where one loss-based controller backs off at
// every random loss and uses a fraction of the capacity, several together
// fill it (the parallel streams of GridFTP or of QEMU's multifd). The
// protocol above sees a single io.ReadWriteCloser, as it would with one
// connection.
//
// It owns the chunk framing, the reordering, and the handshake that tells
// a listener which connections make up one stream. It must not know what
// the bytes mean, nor QUIC, TLS or who the peer is: the caller dials,
// accepts and authenticates the connections, and names the peer when it
// hands one to a Joiner.
//
// # Handshake
//
// Every connection of a striped stream starts, in each direction the
// dialer's way, with a hello:
//
//	+------------+--------------+----------+----------+-------------+
//	| "DRSTRIP1" | session [16] | index u8 | count u8 | reserved u16 |
//	+------------+--------------+----------+----------+-------------+
//
// session is random, the same on all count connections of one stream;
// index numbers them from 0. The first byte of the magic is not a frame
// type of package wire, so a listener can tell a striped connection from a
// plain one by its first bytes (IsHello).
//
// # Chunks
//
// After the hello each connection carries chunks, in both directions:
//
//	+---------+---------+------------+
//	| seq u64 | len u32 | data [len] |
//	+---------+---------+------------+
//
// seq numbers the chunks of one direction of the stream from 0, whatever
// connection carries them; a writer goroutine per connection takes the
// next chunk as soon as its connection has taken the last one, so faster
// connections carry more. The reader puts chunks back in order, holding at
// most MaxBuffered bytes that arrived early; a connection whose chunk is
// next is always read, so a slow connection cannot deadlock the others.
// Integers are big-endian. A chunk of length 0 ends the direction: the
// reader then returns io.EOF once every chunk before it was read.
//
// # Growing
//
// A writer need not use every connection: with Options.Grow it hands
// chunks to the first active ones only, starting with one (or a level an
// earlier stream settled on), and a Grower doubles active while each
// doubling raises goodput by Gain (15%), going back when one does not.
// The dialer dials the most it may use at once, so the hello and the
// reader are the same either way: a connection carrying nothing is one
// whose chunks do not come, kept alive by the transport's keepalives.
// Goodput is measured over windows in which the writer had data waiting
// for a connection: when the sender, not the connections, sets the pace,
// more connections cannot help. The Grower does no IO and reads no
// clock: it takes samples and returns decisions, and its tests are
// scripts (testdata/grow-*.txt).
//
// A connection that fails fails the whole stream: its chunks are lost, and
// the caller reconnects and resumes, as it would after losing a single
// connection.
package stripe
