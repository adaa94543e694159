package qmp

import (
	"encoding/json"
	"fmt"
)

// EncodeCommand is the QMP command cmd with args (nil, or a typed nil such
// as a nil map, for none: QEMU refuses "arguments": null) and, unless id
// is "", the id its reply will carry. Every monitor (a QMP socket, or
// libvirt's pass-through, which gives the command an id of its own)
// encodes commands this one way.
func EncodeCommand(prefix, cmd string, args any, id string) ([]byte, error) {
	c := struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments,omitempty"`
		ID        string          `json:"id,omitempty"`
	}{Execute: cmd, ID: id}
	if args != nil {
		a, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: encode arguments: %w", prefix, cmd, err)
		}
		if string(a) != "null" {
			c.Arguments = a
		}
	}
	req, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: encode: %w", prefix, cmd, err)
	}
	return req, nil
}

// Reply is QEMU's answer to one command: its return value, or its error.
type Reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// Decode is r's error as a *CommandError, or its return value decoded
// into into (nil to ignore it).
func (r *Reply) Decode(prefix, cmd string, into any) error {
	if r.Error != nil {
		return &CommandError{Command: cmd, Desc: r.Error.Desc}
	}
	if into == nil {
		return nil
	}
	if err := json.Unmarshal(r.Return, into); err != nil {
		return fmt.Errorf("%s: %s: decode reply %s: %w", prefix, cmd, truncate(r.Return), err)
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
