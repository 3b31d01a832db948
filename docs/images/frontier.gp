# The frontier in docs/LEAKAGE.md, from docs/images/frontier.dat (the runs' leakage.csv rows,
# seed 1: label twice, accuracy %, dCor, SSIM of decoder, strong decoder,
# mask-only, UnSplit; "nan" where an attack did not run). gnuplot docs/images/frontier.gp
set terminal pngcairo size 1200,520 font "sans,10"
set output "docs/images/frontier.png"
set datafile missing "nan"
set multiplot layout 1,2 title "Fashion-MNIST CNN, 2 epochs, seed 1: leakage against test accuracy (labels: cut, a = NoPeek alpha, n = noise sigma, d = density)"
set grid
set key bottom right
set xlabel "test accuracy (%)"
set yrange [0:1.05]
set ylabel "dCor(inputs, transmitted activations), batches of 1024"
plot "docs/images/frontier.dat" using 3:4 with points pointtype 7 pointsize 1.3 title "dCor", \
     "" using 3:4:2 with labels offset char 0.8,0.6 font ",8" notitle
set ylabel "attack SSIM (1 = perfect copy)"
set key top left
plot "docs/images/frontier.dat" using 3:5 with points pointtype 7 pointsize 1.3 title "decoder (3,000 pairs)", \
     "" using 3:6 with points pointtype 5 title "strong decoder (10,000 pairs, width 64)", \
     "" using 3:7 with points pointtype 9 pointsize 1.5 title "mask-only", \
     "" using 3:8 with points pointtype 13 title "UnSplit (no auxiliary data)", \
     "" using 3:5:2 with labels offset char 0.8,0.6 font ",8" notitle
unset multiplot
