// Variant wgmma tiles for tools/check_wgmma.py --extra tools/wgmma_variants.cu (not in the backends' builds):
// wc..wg other tile shapes and depths, wh..wk dynamic shared memory (the first, register-staged w128
// that the README's earliest figures are of is gone).
// wm: the multistage w128 of before (two warpgroups in lockstep, 48 KB static)
typedef GemmTileOf<GemmWgmmaMultistage<WgmmaTf32x3<128, 128, 8>, 4>, 1> GemmTile_wm;
GEMM_TILE_KERNELS(wm, float, 128, 128, 256, 0, 0, 0)
typedef GemmTileOf<GemmWgmmaMultistage<WgmmaTf32x3<128, 64, 8>, 4>, 2> GemmTile_wc;
typedef GemmTileOf<GemmWgmmaMultistage<WgmmaTf32x3<64, 128, 8>, 4>, 2> GemmTile_wd;
typedef GemmTileOf<GemmWgmmaMultistage<WgmmaTf32x3<128, 64, 8>, 6>, 2> GemmTile_we;
typedef GemmTileOf<GemmWgmmaMultistage<WgmmaTf32x3<64, 64, 8>, 4>, 4> GemmTile_wf;
typedef GemmTileOf<GemmWgmmaMultistage<WgmmaTf32x3<64, 128, 8>, 5>, 3> GemmTile_wg;
GEMM_TILE_KERNELS(wc, float, 128, 64, 256, 0, 0, 0)
GEMM_TILE_KERNELS(wd, float, 64, 128, 128, 0, 0, 0)
GEMM_TILE_KERNELS(we, float, 128, 64, 256, 0, 0, 0)
GEMM_TILE_KERNELS(wf, float, 64, 64, 128, 0, 0, 0)
GEMM_TILE_KERNELS(wg, float, 64, 128, 128, 0, 0, 0)
typedef GemmTileDynamic<GemmWgmmaMultistage<WgmmaTf32x3<128, 128, 8>, 8>, 1> GemmTile_wh;
typedef GemmTileDynamic<GemmWgmmaMultistage<WgmmaTf32x3<128, 128, 16, 2>, 4>, 1> GemmTile_wi;
typedef GemmTileDynamic<GemmWgmmaMultistage<WgmmaTf32x3<128, 64, 8>, 8>, 2> GemmTile_wj;
GEMM_TILE_KERNELS(wh, float, 128, 128, 256, 0, 0, 81920)
GEMM_TILE_KERNELS(wi, float, 128, 128, 256, 0, 0, 98304)
GEMM_TILE_KERNELS(wj, float, 128, 64, 256, 0, 0, 57344)
typedef GemmTileDynamic<GemmWgmmaMultistage<WgmmaTf32x3<128, 128, 16, 1>, 4>, 1> GemmTile_wk;
GEMM_TILE_KERNELS(wk, float, 128, 128, 256, 0, 0, 98304)
// ws*: the warp-specialised pipeline (GemmWgmmaWarpSpecialized: a producer warpgroup, two consumer
// warpgroups, mbarriers), at slab depths 8 to 32 and several stage counts
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 128, 8>, 8, 4>, 1> GemmTile_wsa;
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 128, 16>, 6, 3>, 1> GemmTile_wsb;
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 128, 16>, 4, 2>, 1> GemmTile_wsc;
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 64, 8>, 8, 4>, 2> GemmTile_wsf;
GEMM_TILE_KERNELS(wsa, float, 128, 128, 384, 0, 0, 131200)
GEMM_TILE_KERNELS(wsb, float, 128, 128, 384, 0, 0, 196704)
GEMM_TILE_KERNELS(wsc, float, 128, 128, 384, 0, 0, 131136)
GEMM_TILE_KERNELS(wsf, float, 128, 64, 384, 0, 0, 82048)
