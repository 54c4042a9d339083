/*
 * fleet-modules FILE...: load the kernel modules FILE... in the order given, in one
 * process (modload.h says why). rc.sysinit runs it for the profile's system modules and
 * warns about any it names; exit status 1 if one did not load.
 */
#include "modload.h"

int main(int argc, char **argv)
{
    return load_modules("fleet-modules", argc - 1, argv + 1);
}
