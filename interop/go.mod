module github.com/stackfs/overlay/interop

go 1.26.8

require (
	github.com/google/go-containerregistry v0.22.1
	github.com/spf13/afero v1.15.0
	github.com/stackfs/overlay v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.50.0
)

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/text v0.28.0 // indirect
)

replace github.com/stackfs/overlay => ../
