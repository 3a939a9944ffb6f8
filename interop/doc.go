// Package interop checks the layers that github.com/stackfs/overlay exports
// and applies against other implementations: go-containerregistry's
// mutate.Extract, and the Linux kernel's overlayfs mounted over the same
// layers. It is a module of its own so that the library does not depend on
// go-containerregistry; its tests are the point:
//
//	cd interop && go test ./...
//
// The kernel tests need root and a kernel that mounts overlayfs; set
// OVERLAY_NO_KERNEL=1 to skip them.
package interop
