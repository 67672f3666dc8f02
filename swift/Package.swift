// swift-tools-version:5.9
// The Swift face of pocketml: a thin API over the C ABI (csrc/include/pocketml/pocketml.h)
// and a validator that recomputes golden bundles written by Python.
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
        .library(name: "PocketMLValidation", targets: ["PocketMLValidation"]),
        .executable(name: "pocketml-validate", targets: ["PocketMLValidate"]),
    ],
    targets: [
        .systemLibrary(name: "CPocketML", path: "Sources/CPocketML"),
        .target(name: "PocketML", dependencies: ["CPocketML"]),
        .target(name: "PocketMLValidation", dependencies: ["PocketML", "CPocketML"]),
        .executableTarget(name: "PocketMLValidate", dependencies: ["PocketMLValidation"]),
        .testTarget(name: "PocketMLTests", dependencies: ["PocketML", "PocketMLValidation"]),
    ]
)
