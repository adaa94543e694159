// Package groupcut decides the coordinated cut of a consistency group:
// several VMs, on one host or several, paused at one instant so that each
// takes its epoch there, then resumed. A failover of the group to such a
// point brings every VM back from the same moment: no VM holds a message
// another VM's replica has not sent yet.
//
// One cut, as the Leader drives it (each member is one VM, driven by its
// own Member):
//
//	leader            member (each)                 guest
//	Prepare ────────▶ start the capture             running
//	        ◀──────── Converged                     running: a stop now costs
//	                                                 only a small final pass
//	(all converged)
//	Stop ───────────▶ stop, take the cut            stopped
//	                  (device state, disk bitmap
//	                  and fleecing view)
//	        ◀──────── Held                          stopped
//	(all held: the group's instant; the cut is committed, tagged
//	 vmspec.GroupCut{Group, Cut, Members})
//	Resume ─────────▶ cont, keep the cut            running
//	        ◀──────── Resumed
//
// A member that fails a step, or does not answer within PrepareTimeout
// (converging) or StepTimeout (any other step), aborts the cut: every
// member is told Abort, resumes if stopped and drops its cut; the leader
// retries after RetryAfter, with a new cut number. A member bounds its own
// wait too: a guest held stopped resumes by itself after HoldTimeout
// without word from the leader, so a hung or dead leader never leaves a
// guest paused. A member that drops a cut the leader committed makes that
// group point incomplete; the DR side then never counts it, since a group
// point is whole only when every member's epoch of that cut is committed.
//
// Cut numbers increase with every attempt (NewLeader takes the last one
// used), so a late answer to an older cut is recognised and, if it holds a
// guest stopped, answered with Abort.
//
// The Leader and Member are pure: no files, sockets, processes or clocks;
// time comes in as an argument and messages and actions come out. Options
// (with Validate) describe a group as one sender sees it. groupcut must
// not know QEMU, the capture path (a full migration or another), the wire
// protocol or how messages travel between hosts: the agent runs a
// member's actions on its VM's source and carries the messages.
package groupcut
