// pocketml-validate BUNDLE_DIR...
// Recomputes each golden bundle's checks through pocketml's C ABI and prints the
// errors and latency of each. Exit status: 0 all pass, 1 a check is out of
// tolerance, 2 a bundle could not be read or run, or every check of a bundle
// was skipped (nothing validated must not read as passed).
import Foundation
import PocketMLValidation

let arguments = Array(CommandLine.arguments.dropFirst())
let usage = "usage: pocketml-validate BUNDLE_DIR...\n\nRecomputes golden bundles written by `pocketml golden` "
    + "(or pocketml.export.golden) and compares them with the expected outputs."
/// To stderr through C stdio: FileHandle.write traps (SIGILL) when stderr is closed or full,
/// where the documented exit status must still come out.
func printError(_ message: String) { fputs("pocketml-validate: error: \(message)\n", stderr) }

if arguments == ["--help"] || arguments == ["-h"] {
    print(usage)
    exit(0)
}
// Anything else that looks like an option is refused, not read as a path (nor, -h among paths, a help request).
if arguments.isEmpty || arguments.contains(where: { $0.hasPrefix("-") || $0.isEmpty }) {
    let bad = arguments.first(where: { $0.hasPrefix("-") || $0.isEmpty })
        .map { $0.isEmpty ? "an empty path\n" : "unknown option '\($0)'\n" } ?? ""
    printError("\(bad)\(usage)")
    exit(2)
}

func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }

var exitCode: Int32 = 0
for path in arguments {
    do {
        let bundle = try GoldenBundle(url: URL(fileURLWithPath: path))
        print("bundle \(bundle.name) (\(bundle.producer)) at \(path)")
        let results = try Validator.run(bundle)
        if results.allSatisfy({ $0.skippedBecause != nil }) {
            printError("\(path): every check was skipped, nothing validated")
            exitCode = 2
        }
        for result in results {
            if let reason = result.skippedBecause {
                print("  skip \(pad(result.name, 44)) \(pad(result.op, 18)) \(reason)")
                continue
            }
            let status = result.passed ? "ok  " : "FAIL"
            print("  \(status) \(pad(result.name, 44)) \(pad(result.op, 18)) max abs \(String(format: "%.3g", result.maxAbsError))"
                + "  max rel \(String(format: "%.3g", result.maxRelError))  \(String(format: "%.3f", result.seconds * 1e3)) ms"
                + (result.passed ? "" : "  (\(result.elementsOutOfTolerance) elements out of tolerance)"))
            if !result.passed { exitCode = max(exitCode, 1) }
        }
    } catch {
        printError("\(error)")
        exitCode = 2
    }
}
exit(exitCode)
