// swift-tools-version:5.9
// The Swift face of pocketml: a thin API over the C ABI (csrc/include/pocketml/pocketml.h).
//
// SwiftPM does not compile sources outside the package root, and the core needs
// per-file ISA flags SwiftPM cannot express, so the package links the library
// CMake builds. `make test-swift` builds it and passes the paths:
//   swift test --package-path swift -Xcc -I<repo>/csrc/include \
//     -Xlinker -L<repo>/build/native -Xlinker -rpath -Xlinker <repo>/build/native
import PackageDescription

let package = Package(
    name: "PocketML",
    products: [
        .library(name: "PocketML", targets: ["PocketML"]),
    ],
    targets: [
        .systemLibrary(name: "CPocketML", path: "Sources/CPocketML"),
        .target(name: "PocketML", dependencies: ["CPocketML"]),
        .testTarget(name: "PocketMLTests", dependencies: ["PocketML"]),
    ]
)
