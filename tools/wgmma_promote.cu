// Variant wgmma tiles for tools/check_wgmma.py --extra tools/wgmma_promote.cu (not in the backends'
// builds): the table's Hopper tiles with PROMOTE k8 steps summed on the tensor core before each
// FP32 add into acc (WgmmaTf32x3's PROMOTE; the table's tiles add every k8 step). Fewer adds and
// waits a slab; the tensor core's truncated running sum spans PROMOTE steps. PROMOTE 2 put da1
// (K = 10) over the accuracy bar on the multistage pipeline, but da1 no longer runs on these tiles
// (short K stays on the mma.sync twins), so the K = 784 and K = B products decide:
//     python tools/check_wgmma.py --tiles w128,wp2:128x128x384x196656,wp4:128x128x384x196656,w64,wq2:128x64x384x122976 --extra tools/wgmma_promote.cu
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 128, 32, 2>, 3, 1>, 1> GemmTile_wp2;
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 128, 32, 4>, 3, 1>, 1> GemmTile_wp4;
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 64, 16, 2>, 6, 3>, 1> GemmTile_wq2;
GEMM_TILE_KERNELS(wp2, float, 128, 128, 384, 0, 0, 196656)
GEMM_TILE_KERNELS(wp4, float, 128, 128, 384, 0, 0, 196656)
GEMM_TILE_KERNELS(wq2, float, 128, 64, 384, 0, 0, 122976)
