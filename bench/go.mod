module github.com/stackfs/overlay/bench

go 1.26.8

require (
	github.com/bep/overlayfs v0.11.0
	github.com/spf13/afero v1.15.0
	github.com/stackfs/overlay v0.0.0-00010101000000-000000000000
)

require (
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.34.0 // indirect
)

replace github.com/stackfs/overlay => ../
