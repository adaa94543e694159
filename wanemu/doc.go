// Package wanemu emulates a wide-area link for tests and benchmarks: two
// network namespaces, site A and site B, joined by a packet relay in the
// test process that adds delay, a rate limit with a bounded queue, random
// loss and outages, each direction on its own and all changeable while
// traffic flows.
//
// # What it owns, and what it must not know
//
// The package owns the two namespaces it creates, the TUN device in each,
// the relay goroutines between them and a small clean-up process. It moves
// opaque IP packets: it knows nothing of drsync, QUIC or any protocol above
// IP, and nothing in it may come to depend on them. Programs under test run
// inside the namespaces (Wrap, RunInA, RunInB) or open their sockets there
// (In, Listen, ListenPacket, Dial) and see an ordinary routed link.
//
// # Topology
//
//	  namespace drw-<pid>-<n>-a                namespace drw-<pid>-<n>-b
//	+---------------------------+            +---------------------------+
//	| programs and sockets of A |            | programs and sockets of B |
//	|             |             |            |             |             |
//	|    wana  10.77.N.1/30     |            |    wanb  10.77.N.2/30     |
//	|    (TUN, lo is up too)    |            |    (TUN, lo is up too)    |
//	+-------------|-------------+            +-------------|-------------+
//	              | fd                                     | fd
//	==============|===== test process, own namespace ======|==============
//	              |                                        |
//	              +--> read --> Link A->B --> write -------+
//	              |    loss, queue + rate, delay, outage   |
//	              +<-- write <-- Link B->A <-- read <------+
//
// N is the process's emulator count modulo 256. The namespaces of
// different emulators never meet, so two with the same N do not clash; N
// only tells them apart in logs. Each side has the connected /30 route and
// no other: A reaches B at 10.77.N.2 and B reaches A at 10.77.N.1. The TUN
// devices carry no IPv6 addresses, so the link carries only what programs
// send.
//
// # The link model
//
// Link is the pure core: it decides, for each packet and the time it
// arrived, whether it is dropped (down, lost, queue full, emulator
// overloaded) or when it is due at the far side, and it never reads a
// clock, so tests drive it with a fake one. Per direction, in order:
// outage, random loss, then a bottleneck of RateBitsPerSec that sends
// packets one after the other (serialization delay size·8/rate) from a
// drop-tail queue of QueueBytes, then the propagation Delay (± Jitter).
// Packets are never reordered. Rates count whole IP packets, so UDP or TCP
// goodput is a few percent below the setting.
//
// # Limits
//
//   - Per direction, at most QueueBytes wait for the bottleneck (default
//     1.5 bandwidth-delay products, at least 64 KiB) and at most
//     MaxInFlightBytes (default 32 MiB) are held in all, queue and delay
//     line together; beyond that packets are dropped and counted.
//   - An emulator stops itself after MaxLifetime (default 30 minutes) or
//     when the context given to Start is done, whichever comes first.
//   - The relay copies each packet through user space, two system calls a
//     packet, without offloads: TCP crosses it in MTU-sized packets. Its
//     ceiling is around a gigabit per second on a 2-core machine (about
//     110 000 packets/s), a small fraction of a veth pair's; BenchmarkRelay
//     measures both. Emulated rates should stay well below it.
//   - The kernel holds up to Options.DeviceQueue packets (default 2048)
//     per TUN device for the relay to read. A TUN device gives senders no
//     back-pressure, so a sender that outruns the relay (or a relay starved
//     of CPU) loses packets there, before the emulated link; Stats reports
//     them as Unread.
//   - Delivery times are exact in the model; the relay writes a packet
//     when its timer fires, which on a busy machine is late by the
//     scheduler's latency (tens of microseconds idle, milliseconds when
//     loaded). A packet is never delivered early, only late.
//
// # Clean-up
//
// Stop closes the devices, ends the relay and deletes both namespaces;
// after it no drw-<pid>- namespace of the emulator remains. Before it
// creates anything, Start launches a small shell in its own process group
// that holds a pipe from this process: if the process dies without Stop
// (killed, crashed, os.Exit), the pipe closes and the shell deletes the
// namespaces; the TUN devices die with the process's file descriptors. As a
// last resort, each Start deletes the drw-<pid>- namespaces whose pid no
// longer runs. Sockets or processes still inside a namespace keep it alive,
// unnamed, until they end.
//
// # Requirements
//
// Root, or CAP_NET_ADMIN with CAP_SYS_ADMIN; /dev/net/tun; the ip command
// of iproute2. Check reports what is missing; its errors and Start's wrap
// ErrUnsupported so that tests can skip.
package wanemu
