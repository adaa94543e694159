// Package grouppoint decides, from the recovery points each VM's replica
// retains and the consistency-group tags they carry, which group points are
// complete and which epochs each member must keep so that they stay
// restorable.
//
// A group cut (vmspec.GroupCut) tags one epoch of each member with the same
// (Group, Cut). A group point is complete when every member listed in the
// tag has a restorable point carrying that tag; failing a group over to it
// brings every member back from the same instant, even when some members
// have committed later epochs of their own.
//
// It also words a group point for operators (MemberEpochs, WriteTable), so
// that the status command, the status page and the runbook say it alike.
//
// The package owns these decisions and nothing else: it does no IO and
// must not know replica files, stores, status rendering or the runbook.
// Callers read the points (replica.Points) and act on the answer.
package grouppoint
