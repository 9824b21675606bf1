#include <cblas.h>
// Declared here because the cblas.h alternative Debian selects may be the reference one,
// which lacks OpenBLAS's extensions; the symbol itself comes from libopenblas.
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
char* openblas_get_corename(void);
