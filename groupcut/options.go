package groupcut

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/drsync/drsync/vmspec"
)

// Defaults. A member's first migration pass of a few hundred MiB takes
// well under a second at the capture's bandwidth; the steps after it are
// QMP round trips of milliseconds, so a member silent for StepTimeout is
// hung, not slow.
const (
	DefaultPrepareTimeout = 30 * time.Second
	DefaultStepTimeout    = 2 * time.Second
	DefaultRetryAfter     = 5 * time.Second
)

// ErrConfig marks a group configuration that cannot work.
var ErrConfig = errors.New("invalid group configuration")

// OptionError names the setting of a group that is wrong: Key is the
// option's name in lower case with underscores, as a configuration file
// spells it.
type OptionError struct {
	Group, Key string
	Index      int    // the group's position in a list (ValidateGroups)
	VM         string // set when the VM's own setting is wrong, not the group's
	Err        error
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("group %q: %s: %v", e.Group, e.Key, e.Err)
}

func (e *OptionError) Unwrap() []error { return []error{e.Err, ErrConfig} }

// Options describe one consistency group as one sender sees it.
type Options struct {
	Name string
	// Members are all the group's VMs, on this host and others.
	Members []string
	// Local are the members this sender protects; the others are
	// protected by followers (when this sender leads) or by the leader
	// and other followers.
	Local []string
	// RPO is the group's recovery point target: the group's cuts are
	// planned (epochctl.Group) to keep its oldest member's lag below it,
	// whatever its members' own intervals.
	RPO time.Duration
	// Listen (leader of a group spanning hosts) is the host:port the
	// followers connect to; Leader (follower) is the leader's host:port.
	// A group whose members are all local has neither.
	Listen, Leader string
	// Peers pins the other side's identities (tlsid fingerprints): the
	// followers' on the leader, the leader's on a follower.
	Peers []string

	PrepareTimeout time.Duration // a member's capture converging while it runs
	StepTimeout    time.Duration // any other answer (stopped, cut, resumed)
	RetryAfter     time.Duration // after an aborted cut
}

// Role is what this sender does for the group.
type Role int

const (
	Alone     Role = iota // every member is local: no network
	Leading               // leads followers on other hosts
	Following             // follows the leader
)

func (r Role) String() string {
	return [...]string{"alone", "leader", "follower"}[r]
}

// Role reports what this sender does for the group (after Validate).
func (o *Options) Role() Role {
	switch {
	case o.Listen != "":
		return Leading
	case o.Leader != "":
		return Following
	}
	return Alone
}

// Validate checks o and fills in defaults; Members and Local come out
// sorted. Errors name the setting (the option's lower-case name) and wrap
// ErrConfig.
func (o *Options) Validate() error {
	bad := func(key, format string, a ...any) error {
		return &OptionError{Group: o.Name, Key: key, Err: fmt.Errorf(format, a...)}
	}
	if err := vmspec.ValidVMName(o.Name); err != nil {
		return bad("name", "%v", err)
	}
	if len(o.Members) == 0 {
		return bad("vms", "empty: a group needs its VMs")
	}
	if len(o.Members) > vmspec.MaxGroupMembers {
		return bad("vms", "%d VMs (at most %d)", len(o.Members), vmspec.MaxGroupMembers)
	}
	o.Members = slices.Clone(o.Members)
	slices.Sort(o.Members)
	for i, m := range o.Members {
		if err := vmspec.ValidVMName(m); err != nil {
			return bad("vms", "%v", err)
		}
		if i > 0 && o.Members[i-1] == m {
			return bad("vms", "%q is listed twice", m)
		}
	}
	if len(o.Local) == 0 {
		return bad("vms", "none of %v is a [[vm]] of this sender", o.Members)
	}
	o.Local = slices.Clone(o.Local)
	slices.Sort(o.Local)
	for _, m := range o.Local {
		if _, ok := slices.BinarySearch(o.Members, m); !ok {
			return bad("vms", "local VM %q is not a member", m)
		}
	}
	if o.RPO <= 0 {
		return bad("rpo", "missing: the group's recovery point target, e.g. \"1m\"")
	}
	remote := len(o.Local) < len(o.Members)
	switch {
	case o.Listen != "" && o.Leader != "":
		return bad("leader", "set either listen (this sender leads) or leader (it follows), not both")
	case remote && o.Listen == "" && o.Leader == "":
		return bad("listen", "VMs %v are not [[vm]] of this sender: lead them (listen = \"host:port\") or follow their leader (leader = \"host:port\")", o.remoteMembers())
	case !remote && (o.Listen != "" || o.Leader != ""):
		return bad("listen", "every VM of the group is protected here: no leader or followers to talk to")
	case remote && len(o.Peers) == 0:
		return bad("peers", "missing: the fingerprints of the other senders of the group (drsync keygen prints them)")
	case !remote && len(o.Peers) > 0:
		return bad("peers", "every VM of the group is protected here: no peers to pin")
	}
	o.Peers = slices.Clone(o.Peers)
	for i, p := range o.Peers {
		fp, err := parseFingerprint(p)
		if err != nil {
			return bad(fmt.Sprintf("peers[%d]", i), "%v", err)
		}
		o.Peers[i] = fp
	}
	if o.PrepareTimeout == 0 {
		o.PrepareTimeout = DefaultPrepareTimeout
	}
	if o.StepTimeout == 0 {
		o.StepTimeout = DefaultStepTimeout
	}
	if o.RetryAfter == 0 {
		o.RetryAfter = DefaultRetryAfter
	}
	if o.PrepareTimeout < 0 || o.RetryAfter < 0 {
		return bad("prepare_timeout", "negative")
	}
	if o.StepTimeout < 0 {
		return bad("step_timeout", "negative")
	}
	if o.StepTimeout >= o.RPO {
		return bad("step_timeout", "%s is not below the rpo %s", o.StepTimeout, o.RPO)
	}
	return nil
}

func (o *Options) remoteMembers() []string {
	var r []string
	for _, m := range o.Members {
		if !slices.Contains(o.Local, m) {
			r = append(r, m)
		}
	}
	return r
}
