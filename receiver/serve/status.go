package serve

import (
	"time"
)

// Status is the receiver's record of one VM.
type Status struct {
	VM          string    `json:"vm"`
	Epoch       uint64    `json:"epoch"`
	Cut         time.Time `json:"cut,omitzero"`
	CommittedAt time.Time `json:"committed_at,omitzero"`
	// BytesReceived counts bytes read from the network for committed
	// epochs; RawBytes the same after decompression.
	BytesReceived uint64    `json:"bytes_received"`
	RawBytes      uint64    `json:"raw_bytes"`
	Epochs        uint64    `json:"epochs"`
	LastPeer      *PeerInfo `json:"last_peer,omitempty"`
	// LastError is why the last connection writing this VM failed; a
	// committed epoch clears it.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Updated     time.Time `json:"updated"`
	// HotSetBytes is the RAM kept pinned for a fast failover: the pages
	// written in recent epochs.
	HotSetBytes int64 `json:"hot_set_bytes"`
}

type PeerInfo struct {
	Fingerprint string `json:"fingerprint"`
	Name        string `json:"name,omitempty"`
}
