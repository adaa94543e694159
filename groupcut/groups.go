package groupcut

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// LocalVM is what a group needs to know of a VM this sender protects.
type LocalVM struct {
	Live      bool // a running guest (only those are cut together)
	OwnPacing bool // its own rpo_target or schedule: the group paces it instead
}

// ValidateGroups fills in each group's Local from vms (this sender's VMs)
// and validates each group and the set: a VM belongs to at most one
// group, a group's names are unique, a local member is live and has no
// pacing of its own. Errors are *OptionError, with Index the group's
// position in groups (and VM set when the VM's own setting is wrong).
func ValidateGroups(groups []Options, vms map[string]LocalVM) error {
	in := map[string]string{}
	names := map[string]bool{}
	for i := range groups {
		g := &groups[i]
		bad := func(key, vm, format string, a ...any) error {
			return &OptionError{Group: g.Name, Key: key, Index: i, VM: vm, Err: fmt.Errorf(format, a...)}
		}
		if names[g.Name] {
			return bad("name", "", "group %q is listed twice", g.Name)
		}
		names[g.Name] = true
		g.Local = nil
		for _, m := range g.Members {
			if other, ok := in[m]; ok && other != g.Name {
				return bad("vms", "", "VM %q is already in group %q: a VM belongs to at most one group", m, other)
			}
			in[m] = g.Name
			v, ok := vms[m]
			if !ok {
				continue
			}
			if !v.Live {
				return bad("vms", "", "VM %q has no qmp: only running guests are cut together", m)
			}
			if v.OwnPacing {
				return bad("rpo_target", m, "VM %q is in group %q, whose rpo paces its epochs: leave out its own schedule and rpo_target", m, g.Name)
			}
			g.Local = append(g.Local, m)
		}
		if err := g.Validate(); err != nil {
			if oe, ok := err.(*OptionError); ok {
				oe.Index = i
			}
			return err
		}
	}
	return nil
}

// Select returns the groups all of whose local members are selected (a
// sender asked to send some VMs only cuts the others alone); none for a
// final (switch-back) epoch, which is cut per VM.
func Select(groups []Options, selected func(vm string) bool, final bool) []Options {
	if final {
		return nil
	}
	var r []Options
	for _, g := range groups {
		all := true
		for _, m := range g.Local {
			all = all && selected(m)
		}
		if all {
			r = append(r, g)
		}
	}
	return r
}

// Of returns the group vm is a member of, nil if none (a VM is in one
// group at most: ValidateGroups).
func Of(groups []Options, vm string) *Options {
	for i := range groups {
		if slices.Contains(groups[i].Members, vm) {
			return &groups[i]
		}
	}
	return nil
}

// parseFingerprint checks a pinned peer's "sha256:<64 hex digits>" and
// returns it in lower case (the form tlsid compares).
func parseFingerprint(s string) (string, error) {
	l := strings.ToLower(strings.TrimSpace(s))
	h, ok := strings.CutPrefix(l, "sha256:")
	if _, err := hex.DecodeString(h); !ok || len(h) != 64 || err != nil {
		return "", fmt.Errorf("fingerprint %q: want sha256: and 64 hex digits (printed by drsync keygen)", s)
	}
	return l, nil
}
