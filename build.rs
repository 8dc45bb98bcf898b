//! Link flags for the shipped library.

fn main() {
    // The JVM unloads a native library when its class loader is collected, while our tokio
    // threads may still be running its code; `nodelete` keeps the library mapped for the life
    // of the process instead.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}
