//! Tells the tools which linking mode cudarc was built with: fusedrop's build script passes its
//! `dynamic-linking` feature on as `DEP_FUSEDROP_DYNAMIC_LINKING`. With it, libcublasLt is linked
//! at build time and cudarc has no run-time loading API (src/baseline.rs).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_FUSEDROP_DYNAMIC_LINKING");
    println!("cargo:rustc-check-cfg=cfg(cudarc_dynamic_linking)");
    if std::env::var("DEP_FUSEDROP_DYNAMIC_LINKING").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=cudarc_dynamic_linking");
    }
}
