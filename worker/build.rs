//! Embed an rpath to libtorch's folder so that binaries and test executables find
//! `libtorch_cpu.so` without LD_LIBRARY_PATH. torch-sys reports the folder to its direct
//! dependents as `DEP_TCH_LIBTORCH_LIB` (its `links` key is "tch").
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
        Err(_) => println!("cargo:warning=torch-sys did not report its libtorch folder; set LD_LIBRARY_PATH to run"),
    }
}
